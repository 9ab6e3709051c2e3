package fanout

import (
	"runtime"
	"sync"
	"weak"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// resourcesField is the field number of DiscoveryResponse.resources.
const resourcesField = 2

// prepared maps a DiscoveryResponse built by this package to the
// encodings of its resources, until Codec writes it. An entry whose
// response is never written goes away when the response is collected.
var prepared sync.Map // weak.Pointer[discoveryv3.DiscoveryResponse] -> *encoded

// encoded is what a response's resources were when it was built, and
// their encodings, together.
type encoded struct {
	anys []*anypb.Any
	bufs []mem.Buffer
}

func register(r *discoveryv3.DiscoveryResponse, anys []*anypb.Any, bufs []mem.Buffer) {
	k := weak.Make(r)
	prepared.Store(k, &encoded{anys, bufs})
	runtime.AddCleanup(r, func(k weak.Pointer[discoveryv3.DiscoveryResponse]) { prepared.Delete(k) }, k)
}

// Codec returns the gRPC codec that writes prepared discovery responses
// from their shared encodings and everything else as the standard proto
// codec does. Install it with grpc.ForceServerCodecV2. Without it the
// server works the same, marshaling every response in full.
func Codec() encoding.CodecV2 {
	return codec{fallback: encoding.GetCodecV2(gproto.Name)}
}

type codec struct{ fallback encoding.CodecV2 }

func (codec) Name() string { return gproto.Name }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.fallback.Unmarshal(data, v) }

// Marshal writes a prepared response as its other fields, marshaled
// now, followed by the resources' shared encodings: the same message on
// the wire as proto.Marshal would produce, without copying the
// resources. It falls back to marshaling when the response is not one
// of ours or its resources were changed after it was built.
func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*discoveryv3.DiscoveryResponse)
	if !ok {
		return c.fallback.Marshal(v)
	}
	x, ok := prepared.LoadAndDelete(weak.Make(r))
	if !ok {
		return c.fallback.Marshal(v)
	}
	enc := x.(*encoded)
	if len(enc.anys) != len(r.Resources) {
		return c.fallback.Marshal(v)
	}
	for i, a := range enc.anys {
		if r.Resources[i] != a {
			return c.fallback.Marshal(v)
		}
	}
	head := &discoveryv3.DiscoveryResponse{}
	hr := head.ProtoReflect()
	r.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Number() != resourcesField {
			hr.Set(fd, v)
		}
		return true
	})
	hb, err := proto.Marshal(head)
	if err != nil {
		return nil, err
	}
	out := make(mem.BufferSlice, 0, len(enc.bufs)+1)
	out = append(out, mem.SliceBuffer(hb))
	return append(out, enc.bufs...), nil
}
