package model

import (
	"regexp"
	"strings"
)

// What a path pattern matches, as one regular expression: RE2 syntax,
// which Go's regexp shares, so `bulwark policy explain` in Go and the
// sidecar's RBAC filter in Envoy run the same expression on the same
// normalized path.
//
// The semantics, segment by segment ("/" separates segments):
//   - a literal segment matches itself (any case with ignoreCase);
//   - "*" matches exactly one segment, never an empty one;
//   - "**" matches zero or more segments: "/beta/**" matches "/beta",
//     "/beta/" and everything below; "/files/**/private" matches
//     "/files/private" and "/files/a/b/private";
//   - a prefix ("/v1/*", stored as "/v1/") matches every path that begins
//     with it.
//
// A DENY rule's path is widened for servers that honour path parameters
// (servlet containers read "/admin;jsessionid=1" as "/admin"): each
// literal segment may also carry ";parameters", or "%3B..." for servers
// that decode before they cut. An ALLOW path is never widened. A path with
// a segment that is nothing but parameters, or a dot or two with them
// ("/;x/admin", "/public/..;/admin"), is suspect (SuspectPathRegex): such a
// server reads it as another path, one a regular expression cannot work
// out, so every DENY path matches it and no ALLOW path does.

// SuspectPathRegex matches a normalized path with a segment that is only
// path parameters, or "." or ".." with parameters: ";x", ".;x", "..;x"
// and their "%3B" forms.
const SuspectPathRegex = `.*/\.{0,2}(?:;|%3[bB]).*`

// pathParam is an optional run of path parameters at the end of a
// segment.
const pathParam = `(?:(?:;|%3[bB])[^/]*)?`

// MaxPathRegexSize bounds the estimated size of a path's regular
// expression. Envoy refuses an expression whose RE2 program has more than
// 100 instructions (its runtime key re2.max_program_size.error_level), and
// a refused expression would make the sidecar reject the whole listener;
// the estimate keeps ten in hand.
const MaxPathRegexSize = 90

// RE2 program sizes of the pieces a path expression is built from, as
// Envoy 1.40 counts them (measured; they add up linearly): the match and
// anchoring overhead, one literal byte, and so on.
const (
	re2Base      = 4
	re2Literal   = 1
	re2Segment   = 3 // [^/]+
	re2Param     = 8 // pathParam
	re2AnyDepth  = 5 // (?:/.*)?
	re2AnySuffix = 2 // .*
)

// PathRegex is the regular expression of a path pattern.
type PathRegex struct {
	// Expr is unanchored: it must match the whole path.
	Expr string
	// Size estimates the RE2 program size Envoy will count for Expr.
	Size int
}

// Regex returns the expression of p. With params (DENY rules) each
// literal segment may carry path parameters. Suspect paths are not part
// of it: callers add SuspectPathRegex as the rule's action says.
func (p PathPattern) Regex(ignoreCase, params bool) PathRegex {
	var b strings.Builder
	size := re2Base
	if ignoreCase {
		b.WriteString("(?i)")
	}
	segs := strings.Split(strings.TrimPrefix(p.Value, "/"), "/")
	for i, seg := range segs {
		if p.Kind == PathGlob && seg == "**" {
			// Zero or more segments, each with the slash before it.
			b.WriteString(`(?:/.*)?`)
			size += re2AnyDepth
			continue
		}
		b.WriteString("/")
		size += re2Literal
		switch {
		case p.Kind == PathGlob && seg == "*":
			b.WriteString(`[^/]+`)
			size += re2Segment
		case p.Kind == PathPrefix && i == len(segs)-1:
			// The prefix ends here, at a slash ("/v1/") or inside a
			// segment ("/v1"): anything may follow, parameters included.
			b.WriteString(regexp.QuoteMeta(seg) + ".*")
			size += len(seg)*re2Literal + re2AnySuffix
		default:
			b.WriteString(regexp.QuoteMeta(seg))
			size += len(seg) * re2Literal
			if params && seg != "" {
				b.WriteString(pathParam)
				size += re2Param
			}
		}
	}
	return PathRegex{Expr: b.String(), Size: size}
}
