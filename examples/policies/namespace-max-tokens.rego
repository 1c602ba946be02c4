# Keys minted for the namespace batch-jobs get answers of at most 32
# tokens, whatever they ask for; everyone else is unaffected.
package securechat

import rego.v1

allow := true

max_tokens := 32 if input.namespace == "batch-jobs"
