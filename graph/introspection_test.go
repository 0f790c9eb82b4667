package graph

import "testing"

func TestOnlyIntrospection(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want bool
	}{
		{`{ __schema { types { name } } }`, true},
		{`query IntrospectionQuery { __schema { queryType { name } types { ...FullType } } } fragment FullType on __Type { kind name fields(includeDeprecated: true) { name } }`, true},
		{`{ s: __schema { types { name } } t: __type(name: "LiveEvent") { name } __typename }`, true},
		{`# a comment { liveEvent }
		{ __type(name: "}") { name } }`, true},
		{`{ liveEvent(id: "x") { id } }`, false},
		{`{ __schema { types { name } } liveEvent(id: "x") { id } }`, false},
		{`{ ...Spread } fragment Spread on Query { liveEvent(id: "x") { id } }`, false},
		{`{ a: liveEvent(id: "x") { id } }`, false},
		{`{ __schema { types { name } }`, false},
		{`}{ __schema { name } }`, false},
		{``, false},
		{`{ __schema @include(if: true) { types { name } } }`, true},
		{"{ \"unterminated }", false},
	} {
		if got := onlyIntrospection(tc.q); got != tc.want {
			t.Errorf("onlyIntrospection(%q) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

func FuzzOnlyIntrospection(f *testing.F) {
	f.Add(`{ __schema { types { name } } }`)
	f.Add(`{ liveEvent(id: "x") { id } }`)
	f.Fuzz(func(t *testing.T, q string) {
		_ = onlyIntrospection(q) // never panics, never loops
	})
}
