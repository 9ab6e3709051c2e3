package authz

import (
	"errors"
	"strings"

	"github.com/bulwarkmesh/bulwark/model"
)

// ResolvePeer returns the Request.Peer of a caller written the way an
// operator names one: a SPIFFE ID ("spiffe://..."), taken as it is;
// "namespace/serviceaccount", the identity of that service account in
// trustDomain; or "unauthenticated" (or "none") for a caller without a
// certificate, which is "". The error does not repeat s: the caller
// knows where s came from and says so.
func ResolvePeer(s, trustDomain string) (string, error) {
	switch {
	case s == "unauthenticated" || s == "none":
		return "", nil
	case strings.HasPrefix(s, "spiffe://"):
		return s, nil
	}
	ns, sa, ok := strings.Cut(s, "/")
	if !ok {
		return "", errors.New("want a SPIFFE ID, namespace/serviceaccount or unauthenticated")
	}
	id, err := model.SPIFFEID(trustDomain, ns, sa)
	if err != nil {
		return "", err
	}
	return id.String(), nil
}
