//go:build tools

// Package tools keeps prometheus-adapter's command in this module's build
// list.
package tools

import _ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
