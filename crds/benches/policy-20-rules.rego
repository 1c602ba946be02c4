# The decision-latency benchmark's policy (crds/benches/policy.rs): 20 rules of
# the kinds a model owner writes, over every input field.
package securechat

import rego.v1

default allow := false

# 1-2: administrators always; everyone else only on business routes.
allow if input.tier == "Admin"

allow if {
	business_route
	not blocked
	within_window
}

# 3-4: the routes callers use.
business_route if input.route in {"/v1/chat/completions", "/v1/models", "/v1/usage", "/chat"}

business_route if startswith(input.route, "/v1/")

# 5-8: who is blocked.
blocked if input.namespace in {"quarantine", "offboarded"}

blocked if regex.match(`^key:test-`, input.principal)

blocked if {
	input.client_address != null
	not internal_client
	input.tier == "ReadOnly"
}

blocked if input.request_bytes > 262144

# 9-10: where callers come from.
internal_client if net.cidr_contains("10.0.0.0/8", input.client_address)

internal_client if net.cidr_contains("192.168.0.0/16", input.client_address)

# 11-13: the seed's window, wider for developers.
within_window if {
	input.method == "GET"
	input.usage.requests < 10
}

within_window if {
	input.method == "POST"
	input.usage.requests < limit_for_tier[input.tier]
}

limit_for_tier := {"ReadOnly": 5, "Developer": 60, "Admin": 1000}

# 14-16: office hours for the ReadOnly tier.
office_hours if {
	input.time.hour_utc >= 7
	input.time.hour_utc < 19
	not weekend
}

weekend if input.time.weekday_utc in {"Saturday", "Sunday"}

after_hours if not office_hours

# 17-19: shorter answers for batch namespaces, and after hours.
max_tokens := 32 if input.namespace == "batch-jobs"

max_tokens := 128 if {
	input.namespace != "batch-jobs"
	after_hours
	input.tier == "ReadOnly"
}

# 20: why a request was refused.
reason := sprintf("%s may not %s %s now (request %d of the window)", [input.principal, input.method, input.route, input.usage.requests + 1]) if not allow
