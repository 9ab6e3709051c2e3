package sidecar

import (
	"errors"
	"strings"

	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// response is a DiscoveryResponse read without decoding its resources:
// a thousand simulated sidecars share two cores with the control plane
// they measure, so they read only what a sidecar must to go on (the
// load assignments clusters name, the routes listeners name), and keep
// nothing else of a response, which at 10,000 services is megabytes.
type response struct {
	Version, TypeURL, Nonce string
	Follow                  []string // names to subscribe to next
	Bytes                   int
}

// codec decodes responses into *response and everything else as the
// standard proto codec does.
type codec struct{ fallback encoding.CodecV2 }

func newCodec() codec { return codec{fallback: encoding.GetCodecV2(gproto.Name)} }

func (codec) Name() string { return gproto.Name }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.fallback.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*response)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	b := data.Materialize()
	r.Bytes = len(b)
	var bad error
	err := fields(b, func(num protowire.Number, v []byte) bool {
		switch num {
		case 1:
			r.Version = string(v)
		case 2:
			typeURL, value, err := anyParts(v)
			if err != nil {
				bad = err
				return false
			}
			switch {
			case strings.HasSuffix(typeURL, ".Cluster"):
				if n := edsName(value); n != "" {
					r.Follow = append(r.Follow, n)
				}
			case strings.HasSuffix(typeURL, ".Listener"):
				r.Follow = append(r.Follow, routeNames(value)...)
			}
		case 4:
			r.TypeURL = string(v)
		case 5:
			r.Nonce = string(v)
		}
		return true
	})
	return errors.Join(err, bad)
}

// fields calls f for each length-delimited field of a message until f
// returns false.
func fields(b []byte, f func(num protowire.Number, v []byte) bool) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			if !f(num, v) {
				return nil
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

func anyParts(b []byte) (typeURL string, value []byte, err error) {
	err = fields(b, func(num protowire.Number, v []byte) bool {
		switch num {
		case anyTypeURL:
			typeURL = string(v)
		case anyValueField:
			value = v
		}
		return true
	})
	return typeURL, value, err
}

// field returns the first length-delimited field num of a message.
func field(b []byte, num protowire.Number) []byte {
	var out []byte
	_ = fields(b, func(n protowire.Number, v []byte) bool {
		if n == num {
			out = v
			return false
		}
		return true
	})
	return out
}

// Field numbers of the Envoy messages read here.
const (
	clusterName        = 1 // Cluster.name
	clusterEDSConfig   = 3 // Cluster.eds_cluster_config
	edsServiceName     = 2 // EdsClusterConfig.service_name
	claClusterName     = 1 // ClusterLoadAssignment.cluster_name
	routeConfigName    = 1 // RouteConfiguration.name
	listenerChains     = 3 // Listener.filter_chains
	listenerDefault    = 25
	chainFilters       = 3 // FilterChain.filters
	filterTypedConfig  = 4 // Filter.typed_config
	anyTypeURL         = 1
	anyValueField      = 2
	hcmRDS             = 3 // HttpConnectionManager.rds
	rdsRouteConfigName = 2 // Rds.route_config_name
)

var errNoName = errors.New("resource without a name")

// edsName returns the load assignment an EDS cluster needs, or "".
func edsName(cluster []byte) string {
	eds := field(cluster, clusterEDSConfig)
	if eds == nil {
		return ""
	}
	if n := field(eds, edsServiceName); len(n) > 0 {
		return string(n)
	}
	return string(field(cluster, clusterName))
}

// routeNames returns the route configurations a listener's HTTP
// connection managers load over RDS.
func routeNames(listener []byte) []string {
	var out []string
	chain := func(fc []byte) {
		_ = fields(fc, func(num protowire.Number, filter []byte) bool {
			if num != chainFilters {
				return true
			}
			tc := field(filter, filterTypedConfig)
			if tc == nil || !strings.HasSuffix(string(field(tc, anyTypeURL)), ".HttpConnectionManager") {
				return true
			}
			if rds := field(field(tc, anyValueField), hcmRDS); rds != nil {
				out = append(out, string(field(rds, rdsRouteConfigName)))
			}
			return true
		})
	}
	_ = fields(listener, func(num protowire.Number, v []byte) bool {
		if num == listenerChains || num == listenerDefault {
			chain(v)
		}
		return true
	})
	return out
}
