//go:build tools

// Package tools keeps the netpol-analyzer command in this module's build
// list. It evaluates NetworkPolicies the way the Kubernetes semantics say,
// so tests check what a policy allows, not how it is spelled.
package tools

import _ "github.com/np-guard/netpol-analyzer/cmd/netpolicy"
