//go:build tools

// Package tools keeps kube-router in this module's build list: the real
// node's NetworkPolicy enforcer (its policy controller only, see
// tests/cluster/node-up.sh).
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
