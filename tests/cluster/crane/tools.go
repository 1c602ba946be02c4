//go:build tools

// Package tools keeps the crane command in this module's build list.
package tools

import _ "github.com/google/go-containerregistry/cmd/crane"
