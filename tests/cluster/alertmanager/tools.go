//go:build tools

// Package tools keeps the alertmanager command in this module's build list.
package tools

import _ "github.com/prometheus/alertmanager/cmd/alertmanager"
