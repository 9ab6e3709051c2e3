package xds

import (
	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	sslinputsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/ssl/v3"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
)

// OneURISANRule names the check that refuses a peer whose certificate
// carries more than one URI SAN; a refusal's access log line reads
// rbac_access_denied_matched_policy[~one-uri-san]. Like
// authz.DefaultDenyRule it starts with "~", which no policy's rule name
// can.
//
// An X.509-SVID has exactly one URI SAN. Bulwark's CA never issues
// another leaf, but a plug-in or misbehaving CA could, and Envoy would
// accept it: its TLS validation and its RBAC principals match a
// certificate when any one of its URI SANs matches, while the app is told
// them all in x-forwarded-client-cert and may well read the first. So a
// certificate with two identities could be authorized as one and seen by
// the app as the other. Envoy has no validation option that counts SANs;
// its matcher input envoy.matching.inputs.uri_san gives them joined by
// commas (and a SPIFFE ID cannot contain a comma), so an RBAC filter in
// front of the policy's admits a connection only when that input is
// present and has no comma.
const OneURISANRule = "~one-uri-san"

// oneURISANName is the name of the filters that apply OneURISANRule, on
// HTTP and on TCP; Envoy finds their code by the type of their config.
const oneURISANName = "bulwark.one_uri_san"

// oneURISANMatcher allows what carries exactly one URI SAN and denies
// everything else, both under the name OneURISANRule.
func oneURISANMatcher() *xdsmatcherv3.Matcher {
	verdict := func(a rbacv3.RBAC_Action) *xdsmatcherv3.Matcher_OnMatch {
		return &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{
			Name:        "envoy.filters.rbac.action",
			TypedConfig: protoany.Must(&rbacv3.Action{Name: OneURISANRule, Action: a}),
		}}}
	}
	single := &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate{
		Input: &xdscorev3.TypedExtensionConfig{
			Name:        "envoy.matching.inputs.uri_san",
			TypedConfig: protoany.Must(&sslinputsv3.UriSanInput{}),
		},
		// The whole value: one or more characters, none a comma.
		Matcher: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: &xdsmatcherv3.StringMatcher{
			MatchPattern: &xdsmatcherv3.StringMatcher_SafeRegex{SafeRegex: &xdsmatcherv3.RegexMatcher{
				EngineType: &xdsmatcherv3.RegexMatcher_GoogleRe2{GoogleRe2: &xdsmatcherv3.RegexMatcher_GoogleRE2{}},
				Regex:      "[^,]+",
			}},
		}},
	}
	return &xdsmatcherv3.Matcher{
		MatcherType: &xdsmatcherv3.Matcher_MatcherList_{MatcherList: &xdsmatcherv3.Matcher_MatcherList{
			Matchers: []*xdsmatcherv3.Matcher_MatcherList_FieldMatcher{{
				Predicate: &xdsmatcherv3.Matcher_MatcherList_Predicate{
					MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_{SinglePredicate: single},
				},
				OnMatch: verdict(rbacv3.RBAC_ALLOW),
			}},
		}},
		OnNoMatch: verdict(rbacv3.RBAC_DENY),
	}
}

// oneURISANHTTPFilter applies OneURISANRule to each request of a mutual
// TLS chain: a refused one gets 403 and its access log line names the
// rule. It goes before the policy's RBAC filter. Its statistics are
// http.<prefix>.rbac.one_uri_san.{allowed,denied}, apart from the
// policy's.
func oneURISANHTTPFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name: oneURISANName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: protoany.Must(&rbachttpv3.RBAC{
			Matcher:         oneURISANMatcher(),
			RulesStatPrefix: "one_uri_san.",
		})},
	}
}

// oneURISANNetworkFilter applies OneURISANRule to a TCP connection of a
// mutual TLS chain: a refused one is closed, and the TCP proxy's access
// log line names the rule in "termination". It goes before the policy's
// RBAC filter; statPrefix names its statistics.
func oneURISANNetworkFilter(statPrefix string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: oneURISANName,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: protoany.Must(&rbacnetv3.RBAC{
			StatPrefix: statPrefix,
			Matcher:    oneURISANMatcher(),
		})},
	}
}
