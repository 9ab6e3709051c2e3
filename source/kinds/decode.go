package kinds

import (
	"encoding/json"

	"github.com/bulwarkmesh/bulwark/model"
)

// DecodeSpec decodes raw, an object's spec as a Kubernetes client holds
// it (the JSON value as maps, slices, strings, numbers and booleans), into
// out, a pointer to the kind's API type (see NewSpec). A value that does
// not fit the type is a problem of the field spec.
func DecodeSpec(raw any, out any) error {
	b, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return &model.FieldError{Path: "spec", Detail: err.Error()}
	}
	return nil
}
