# The seed's example: a caller may read (GET: /v1/models, /v1/usage) while
# it has made fewer than 10 requests in the current window, and is refused
# after, until the window ends. Other methods are left to the tier table.
#
# Use: spec.auth.policy.rego (inline) or a ConfigMap named by
# spec.auth.policy.configMapRef. The input and the decision are documented
# in the chart's README (Policy in Rego).
package securechat

import rego.v1

default allow := false

allow if input.method != "GET"

allow if {
	input.method == "GET"
	input.usage.requests < 10
}

reason := sprintf("at most 10 requests per %d s window may read; this is request %d", [input.usage.window_seconds, input.usage.requests + 1]) if not allow
