# The default model, for the scripts: sourced, never run. The same values
# as crds/src/default_model.rs, whose test fails when the two differ.
# shellcheck disable=SC2034 # each script uses some of these
DEFAULT_MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
# Where `make model` puts it (SECURECHAT_MODEL_DIR overrides).
DEFAULT_MODEL_DIR="${SECURECHAT_MODEL_DIR:-$HOME/.cache/securechat/models}"
DEFAULT_MODEL="$DEFAULT_MODEL_DIR/$DEFAULT_MODEL_FILE"
# Where the server image keeps it.
EMBEDDED_MODEL_DIR=/opt/securechat/models
