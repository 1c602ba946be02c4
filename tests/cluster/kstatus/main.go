// kstatus reads one Kubernetes object (YAML or JSON) on stdin and prints
// the status kstatus computes for it as JSON: {"status": ..., "message": ...}.
// The tests run it on our resources to check what a GitOps tool waiting on
// them would see (Current, InProgress, Failed).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type output struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run() error {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// YAML (or JSON, which is YAML) to JSON, then decoded as the API
	// machinery does: integers stay int64, which kstatus requires of
	// metadata.generation.
	document, err := yaml.YAMLToJSON(input)
	if err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	object := &unstructured.Unstructured{}
	if err := object.UnmarshalJSON(document); err != nil {
		return fmt.Errorf("decoding the object: %w", err)
	}
	result, err := status.Compute(object)
	if err != nil {
		return fmt.Errorf("computing the status: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(output{Status: result.Status.String(), Message: result.Message})
}
