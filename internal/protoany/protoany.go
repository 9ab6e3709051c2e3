package protoany

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Must returns m packed into an Any, marshaled deterministically:
// anypb.New orders map entries at random, and two encodings of one
// configuration would hash to two versions. It panics if m cannot be
// marshaled, which for the messages a translator builds is a
// programming error. m is not retained.
func Must(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("protoany: marshal %T: %v", m, err))
	}
	return a
}
