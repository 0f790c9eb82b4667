// Package defaults is the one way stagecast's packages apply their
// configuration defaults. Each package with a Config has:
//
//   - DefaultConfig() Config: every documented default, in one place; the
//     command-line flags take their defaults from it, so a default is typed
//     once;
//   - New(cfg) (or the package's constructor) fills each zero field of cfg from
//     DefaultConfig() with Fill, then calls cfg.Validate();
//   - Validate() error: checks, and changes nothing.
//
// Zero means "the default". Where a limit can be switched off, a negative
// value means off, and the field's comment says so; elsewhere a negative
// value is an error, never silently the default.
package defaults

import "reflect"

// Fill sets each zero-valued field of *c (top level only: a struct field is
// taken whole) to def's value of it. Unexported fields are left alone.
func Fill[T any](c *T, def T) {
	v, d := reflect.ValueOf(c).Elem(), reflect.ValueOf(def)
	if v.Kind() != reflect.Struct {
		panic("defaults.Fill: not a struct: " + v.Type().String())
	}
	for i := range v.NumField() {
		f := v.Field(i)
		if !f.CanSet() || !f.IsZero() {
			continue
		}
		f.Set(d.Field(i))
	}
}
