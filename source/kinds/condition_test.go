package kinds

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bulwarkmesh/bulwark/model"
)

// TestConditionMessageIsCutBetweenCharacters: a long message is cut to
// MaxMessage on a character boundary. Cut inside a character, the message
// is not UTF-8; the API server stores it with U+FFFD in its place, so the
// status read back never equals the one computed and the source writes it
// again on every mapping. (Found by FuzzPolicyObject.)
func TestConditionMessageIsCutBetweenCharacters(t *testing.T) {
	for pad := range 4 {
		err := &model.FieldError{Path: "spec.x", Detail: strings.Repeat("y", pad) + strings.Repeat("é", MaxMessage)}
		m := Verdict{Generation: 1, Err: err}.Condition().Message
		if !utf8.ValidString(m) {
			t.Errorf("pad %d: the message is not UTF-8 where it was cut: %q", pad, m[MaxMessage-8:MaxMessage+4])
		}
		if len(m) > MaxMessage+len("... (not in force)") {
			t.Errorf("pad %d: the message has %d bytes", pad, len(m))
		}
	}
}
