package protoany_test

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
)

func TestMust(t *testing.T) {
	fields := map[string]any{}
	for i := range 64 {
		fields[fmt.Sprintf("k%02d", i)] = i
	}
	for _, tc := range []struct {
		name string
		msg  func(t *testing.T) *structpb.Struct
	}{
		{"empty", func(*testing.T) *structpb.Struct { return &structpb.Struct{} }},
		{"map of 64 entries", func(t *testing.T) *structpb.Struct {
			s, err := structpb.NewStruct(fields)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := protoany.Must(tc.msg(t))
			if want := "type.googleapis.com/google.protobuf.Struct"; first.GetTypeUrl() != want {
				t.Errorf("type URL %q, want %q", first.GetTypeUrl(), want)
			}
			// A map's order is random per marshal unless it is
			// deterministic: equal messages, built afresh, give equal bytes.
			for range 20 {
				if again := protoany.Must(tc.msg(t)); !bytes.Equal(again.GetValue(), first.GetValue()) {
					t.Fatal("two encodings of one message")
				}
			}
			var back structpb.Struct
			if err := first.UnmarshalTo(&back); err != nil {
				t.Fatal(err)
			}
			if len(back.GetFields()) != len(tc.msg(t).GetFields()) {
				t.Errorf("round trip has %d fields, want %d", len(back.GetFields()), len(tc.msg(t).GetFields()))
			}
		})
	}
}
