package graph

// Introspection through the depth limit: the standard introspection query
// (graphql-js getIntrospectionQuery(), which GraphiQL, graphql-codegen and
// Apollo send) nests ofType about a dozen levels deep, past the data limit of
// 6. A query whose operations select only introspection fields (__schema,
// __type, __typename) at the top runs on a schema with IntrospectionDepth
// instead; anything else, including a query mixing data and introspection,
// keeps every data limit. The split is decided by onlyIntrospection, a
// conservative scan: whatever it cannot read as introspection goes the data way.

// onlyIntrospection reports whether every top-level selection of every
// operation in q is __schema, __type or __typename (aliases allowed; a
// fragment spread at the top counts as data).
func onlyIntrospection(q string) bool {
	toks, ok := lex(q)
	if !ok {
		return false
	}
	depth, fields := 0, 0
	inFragment := false // a fragment definition's body is not an operation
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t == "{":
			depth++
		case t == "}":
			depth--
			if depth == 0 {
				inFragment = false
			}
			if depth < 0 {
				return false
			}
		case depth == 0 && t == "fragment":
			inFragment = true
		case t == "(": // arguments or variable definitions: skip to the matching ")"
			n := 1
			for i++; i < len(toks) && n > 0; i++ {
				if toks[i] == "(" {
					n++
				} else if toks[i] == ")" {
					n--
				}
			}
			i--
		case depth == 1 && !inFragment:
			switch {
			case t == "...":
				return false
			case t == "@": // a directive: its name follows
				i++
			case isName(t):
				if i+1 < len(toks) && toks[i+1] == ":" { // an alias: the field follows
					i += 2
					if i >= len(toks) {
						return false
					}
					t = toks[i]
				}
				if t != "__schema" && t != "__type" && t != "__typename" {
					return false
				}
				fields++
			}
		}
	}
	return depth == 0 && fields > 0
}

func isName(t string) bool {
	c := t[0]
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// lex splits a GraphQL document into names, punctuators and "..."; strings,
// numbers and comments are dropped (strings become "s"). false: not lexable.
func lex(q string) ([]string, bool) {
	var out []string
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == 0xef || c == 0xbb || c == 0xbf:
			i++
		case c == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '"':
			if len(q) >= i+3 && q[i:i+3] == `"""` {
				j := i + 3
				for j+3 <= len(q) && q[j:j+3] != `"""` {
					if q[j] == '\\' {
						j++
					}
					j++
				}
				if j+3 > len(q) {
					return nil, false
				}
				i = j + 3
			} else {
				j := i + 1
				for j < len(q) && q[j] != '"' {
					if q[j] == '\\' {
						j++
					}
					j++
				}
				if j >= len(q) {
					return nil, false
				}
				i = j + 1
			}
			out = append(out, "s")
		case c == '.':
			if len(q) < i+3 || q[i:i+3] != "..." {
				return nil, false
			}
			out = append(out, "...")
			i += 3
		case c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
			j := i
			for j < len(q) && (q[j] == '_' || (q[j] >= 'a' && q[j] <= 'z') || (q[j] >= 'A' && q[j] <= 'Z') || (q[j] >= '0' && q[j] <= '9')) {
				j++
			}
			out = append(out, q[i:j])
			i = j
		case c == '-' || (c >= '0' && c <= '9'):
			j := i + 1
			for j < len(q) && ((q[j] >= '0' && q[j] <= '9') || q[j] == '.' || q[j] == 'e' || q[j] == 'E' || q[j] == '+' || q[j] == '-') {
				j++
			}
			out = append(out, "0")
			i = j
		case c == '$':
			i++
		case c == '{' || c == '}' || c == '(' || c == ')' || c == ':' || c == '@' || c == '[' || c == ']' || c == '=' || c == '!' || c == '|' || c == '&':
			out = append(out, string(c))
			i++
		default:
			return nil, false
		}
	}
	return out, true
}
