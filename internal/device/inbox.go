package device

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/stagecast/stagecast/internal/wire"
)

// InboxPage is one pull of the inbox query.
type InboxPage struct {
	Notes []wire.ProxyFrame // as note frames (Op "note", ID the cursor)
	Next  string
}

const inboxQuery = `query Inbox($after: String, $limit: Int) { inbox(after: $after, limit: $limit) { notes { id nid type priority payload ts } next } }`

// PullInbox runs the inbox query against a prefetch server's /graphql with the
// device token.
func PullInbox(ctx context.Context, hc *http.Client, graphqlURL, token, after string, limit int) (InboxPage, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := graphQLRequest(ctx, graphqlURL, token, map[string]any{"query": inboxQuery, "variables": map[string]any{"after": after, "limit": limit}})
	if err != nil {
		return InboxPage{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return InboxPage{}, fmt.Errorf("inbox pull: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return InboxPage{}, fmt.Errorf("inbox pull: %w", err)
	}
	var out struct {
		Data *struct {
			Inbox struct {
				Notes []wire.ProxyFrame `json:"notes"`
				Next  string            `json:"next"`
			} `json:"inbox"`
		} `json:"data"`
		Errors []struct {
			Message    string            `json:"message"`
			Extensions map[string]string `json:"extensions"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return InboxPage{}, fmt.Errorf("inbox pull: HTTP %d: %w", resp.StatusCode, err)
	}
	if len(out.Errors) > 0 || out.Data == nil {
		msg := fmt.Sprintf("HTTP %d", resp.StatusCode)
		if len(out.Errors) > 0 {
			msg = out.Errors[0].Extensions["code"] + ": " + out.Errors[0].Message
		}
		return InboxPage{}, fmt.Errorf("inbox pull: %s", msg)
	}
	page := InboxPage{Notes: out.Data.Inbox.Notes, Next: out.Data.Inbox.Next}
	for i := range page.Notes {
		page.Notes[i].Op = wire.OpNote
	}
	return page, nil
}
