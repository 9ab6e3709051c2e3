package kinds

import (
	"reflect"
	"testing"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
)

// fill sets every field reachable from v to a value that is not zero:
// one element in each slice and map, a target for each pointer.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Uint32, reflect.Uint64, reflect.Uint:
		v.SetUint(7)
	case reflect.Int, reflect.Int32, reflect.Int64:
		v.SetInt(7)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem())
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0))
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i))
			}
		}
	}
}

// zeroFields lists the paths of the fields reachable from v that are zero.
func zeroFields(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return []string{path}
		}
		return zeroFields(v.Elem(), path)
	case reflect.Slice:
		if v.Len() == 0 {
			return []string{path}
		}
		return zeroFields(v.Index(0), path+"[0]")
	case reflect.Map:
		if v.Len() == 0 {
			return []string{path}
		}
		iter := v.MapRange()
		iter.Next()
		return zeroFields(iter.Value(), path+"[k]")
	case reflect.Struct:
		var out []string
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				out = append(out, zeroFields(v.Field(i), path+"."+f.Name)...)
			}
		}
		return out
	}
	if v.IsZero() {
		return []string{path}
	}
	return nil
}

// TestConversionKeepsEveryField fails when a field of a public type has
// no line in the conversion (or the model has a field the API cannot
// set): the value written by a user would be dropped on its way in.
func TestConversionKeepsEveryField(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      any
		convert func(any) any
	}{
		{"MeshSpec", &v1alpha1.MeshSpec{}, func(in any) any { return MeshSpec(in.(*v1alpha1.MeshSpec)) }},
		{"AccessPolicySpec", &v1alpha1.AccessPolicySpec{}, func(in any) any { return AccessPolicySpec(in.(*v1alpha1.AccessPolicySpec)) }},
		{"MTLSPolicySpec", &v1alpha1.MTLSPolicySpec{}, func(in any) any { return MTLSPolicySpec(in.(*v1alpha1.MTLSPolicySpec)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fill(reflect.ValueOf(tc.in).Elem())
			if zero := zeroFields(reflect.ValueOf(tc.in), tc.name); len(zero) > 0 {
				t.Fatalf("the test's filler left fields empty: %v", zero)
			}
			if zero := zeroFields(reflect.ValueOf(tc.convert(tc.in)), tc.name); len(zero) > 0 {
				t.Errorf("the conversion leaves these model fields empty: %v", zero)
			}
		})
	}
}

// TestEveryPolicyKindIsRegistered ties the registry to the API: each
// custom resource kind of api/v1alpha1 is a registered kind whose
// resource is served by the generated CRD.
func TestEveryPolicyKindIsRegistered(t *testing.T) {
	for _, name := range []string{v1alpha1.KindAccessPolicy, v1alpha1.KindMTLSPolicy} {
		k := Lookup(name)
		if k == nil {
			t.Fatalf("%s is not registered", name)
		}
		if got := k.GVR().String(); got == "" || k.GVR().Group != v1alpha1.Group {
			t.Errorf("%s: GVR %s", name, got)
		}
	}
	if Lookup("Mesh") != nil {
		t.Error("Mesh is a mesh-file document, not a policy kind")
	}
}
