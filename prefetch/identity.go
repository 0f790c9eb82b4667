package prefetch

import (
	"context"
	"errors"
	"net/http"
	"net/netip"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/serve"
)

// TokenVerifier checks a device token (devicetoken.Verifier and
// devicetoken.Cache satisfy it).
type TokenVerifier interface {
	Verify(token string) (devicetoken.Claims, error)
}

// IdentityConfig says how the prefetch API tells devices apart. Zero value: no
// tokens checked, nobody trusted to claim a priority.
type IdentityConfig struct {
	// Tokens verifies device tokens (Authorization: Bearer). A token that is
	// sent must verify (else 401); a valid one identifies the device (inbox
	// reads) and makes its X-Stagecast-Priority header believed.
	Tokens TokenVerifier
	// Require refuses requests without a valid device token (401).
	Require bool
	// TrustedNetworks: requests whose TCP source is in one of these (an
	// operator's own network) may set X-Stagecast-Priority without a token.
	TrustedNetworks []netip.Prefix
}

// Validate checks the config.
func (c *IdentityConfig) Validate() error {
	if c.Require && c.Tokens == nil {
		return errors.New("prefetch: requiring device tokens needs device keys")
	}
	return nil
}

type identityKey struct{}

// identity is what the middleware learned about a request.
type identity struct {
	claims  *devicetoken.Claims
	trusted bool
}

// Identify wraps next: it verifies the device token of each request (once per
// request, through the verifier's cache), answers 401 where a token is bad or
// missing but required, and records who the device is and whether its
// priority header is believed.
func (c IdentityConfig) Identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var id identity
		if tok, ok := devicetoken.FromHeader(r); ok && c.Tokens != nil {
			cl, err := c.Tokens.Verify(tok)
			if err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
				WriteError(w, http.StatusUnauthorized, "unauthorized", err.Error())
				return
			}
			id.claims, id.trusted = &cl, true
		}
		if c.Require && id.claims == nil {
			w.Header().Set("WWW-Authenticate", "Bearer")
			WriteError(w, http.StatusUnauthorized, "unauthorized", "a device token is required (Authorization: Bearer <token>)")
			return
		}
		if !id.trusted && len(c.TrustedNetworks) > 0 {
			ip := serve.ClientIP(r)
			for _, p := range c.TrustedNetworks {
				if p.Contains(ip) {
					id.trusted = true
					break
				}
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

// Device returns the verified device token's claims of a request that went
// through Identify, if it carried one.
func Device(ctx context.Context) (devicetoken.Claims, bool) {
	id, _ := ctx.Value(identityKey{}).(identity)
	if id.claims == nil {
		return devicetoken.Claims{}, false
	}
	return *id.claims, true
}

func trusted(r *http.Request) bool {
	id, _ := r.Context().Value(identityKey{}).(identity)
	return id.trusted
}
