// Package wire is stagecast's wire format: the identifiers, the stage record, the
// device frames (device -> proxy and proxy -> device), the error and close codes,
// and the message the engine publishes to proxies.
//
// Every side imports it (proxy, broadcaster, device client, loadgen), so they
// cannot drift apart. docs/protocol.md is the prose version of this package.
//
// Encoding of proxy -> device frames is hand-written (ids are restricted to a
// grammar that never needs JSON escaping) so a broadcast is encoded once with no
// reflection; decoding of device frames uses encoding/json and is fuzzed.
package wire
