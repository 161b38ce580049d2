//! Provider profiles: where each named provider is, which wire format it speaks, and where
//! its API key comes from.
//!
//! A job spec names a provider (`provider: ollama`) and may set a `base_url`; everything else
//! about the endpoint, and above all the key, comes from here and never from the spec. The
//! built-in profiles cover OpenAI, Anthropic, OpenRouter and the usual local servers; a TOML
//! file (`providers.toml` in the user's configuration directory, or the file named by
//! `CONVERGE_PROVIDERS`) overrides them or adds new ones:
//!
//! ```toml
//! [providers.ollama]
//! base_url = "http://gpu-box:11434/v1"
//!
//! [providers.vllm-east]
//! wire = "openai"
//! base_url = "http://10.0.0.5:8000/v1"
//! api_key_env = "VLLM_EAST_KEY"
//! ```
//!
//! A key is read from the profile's `api_key_env` variable, or from `api_key` in the file (keep
//! such a file private). Keys are held as [`ApiKey`], which never prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use converge_runtime::spec::check_base_url;
use serde::Deserialize;

use crate::openai::MaxTokensField;
use crate::provider::ApiKey;

/// The environment variable naming the provider file to use instead of the default one.
pub const PROVIDERS_ENV: &str = "CONVERGE_PROVIDERS";

/// The provider a spec's `llm` agent uses when it names none.
pub const DEFAULT_PROVIDER: &str = "openai";

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// OpenAI's chat completions (OpenAI, Ollama, vLLM, llama.cpp, LM Studio, OpenRouter…).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

/// One named provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its wire format.
    pub wire: WireFormat,
    /// Its base URL (`…/v1` for the OpenAI format, the host for Anthropic's).
    pub base_url: String,
    /// The environment variable holding its key, if it takes one.
    pub api_key_env: Option<String>,
    /// A key written in the provider file.
    pub api_key: Option<ApiKey>,
    /// Whether a call without a key is refused before it is made (hosted APIs).
    pub key_required: bool,
    /// Which request field carries the token limit (OpenAI format only).
    pub max_tokens_field: MaxTokensField,
}

/// A provider file or profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read the provider file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid provider file.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        detail: String,
    },
}

/// Every profile a run can use, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Providers {
    profiles: BTreeMap<String, Profile>,
    origin: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    providers: BTreeMap<String, RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    wire: Option<WireFormat>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    api_key: Option<String>,
    key_required: Option<bool>,
    max_tokens_field: Option<MaxTokensField>,
}

fn hosted(wire: WireFormat, base_url: &str, key_env: &str) -> Profile {
    Profile {
        wire,
        base_url: base_url.to_owned(),
        api_key_env: Some(key_env.to_owned()),
        api_key: None,
        key_required: true,
        max_tokens_field: MaxTokensField::MaxTokens,
    }
}

fn local(base_url: &str) -> Profile {
    Profile {
        wire: WireFormat::Openai,
        base_url: base_url.to_owned(),
        api_key_env: None,
        api_key: None,
        key_required: false,
        max_tokens_field: MaxTokensField::MaxTokens,
    }
}

impl Providers {
    /// The built-in profiles: `openai`, `anthropic`, `openrouter` (keys from
    /// `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `OPENROUTER_API_KEY`), and the local servers
    /// `ollama` (port 11434), `vllm` (8000), `llamacpp` (8080) and `lmstudio` (1234) on
    /// 127.0.0.1, which take no key.
    ///
    /// ```
    /// use converge_llm::{Providers, WireFormat};
    ///
    /// let providers = Providers::builtin();
    /// let ollama = providers.profile("ollama").unwrap();
    /// assert_eq!(ollama.wire, WireFormat::Openai);
    /// assert_eq!(ollama.base_url, "http://127.0.0.1:11434/v1");
    /// assert!(!ollama.key_required);
    /// ```
    pub fn builtin() -> Providers {
        let mut openai = hosted(
            WireFormat::Openai,
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
        );
        openai.max_tokens_field = MaxTokensField::MaxCompletionTokens;
        let profiles = [
            ("openai", openai),
            (
                "anthropic",
                hosted(
                    WireFormat::Anthropic,
                    "https://api.anthropic.com",
                    "ANTHROPIC_API_KEY",
                ),
            ),
            (
                "openrouter",
                hosted(
                    WireFormat::Openai,
                    "https://openrouter.ai/api/v1",
                    "OPENROUTER_API_KEY",
                ),
            ),
            ("ollama", local("http://127.0.0.1:11434/v1")),
            ("vllm", local("http://127.0.0.1:8000/v1")),
            ("llamacpp", local("http://127.0.0.1:8080/v1")),
            ("lmstudio", local("http://127.0.0.1:1234/v1")),
        ];
        Providers {
            profiles: profiles
                .into_iter()
                .map(|(name, profile)| (name.to_owned(), profile))
                .collect(),
            origin: None,
        }
    }

    /// The built-in profiles with the provider file's on top: the file named by
    /// `CONVERGE_PROVIDERS` if set, else `providers.toml` in `config_dir` if it exists.
    pub fn discover(config_dir: Option<&Path>) -> Result<Providers, ConfigError> {
        let named = std::env::var_os(PROVIDERS_ENV).filter(|path| !path.is_empty());
        if let Some(path) = named {
            return Providers::load(Path::new(&path));
        }
        match config_dir.map(|dir| dir.join("providers.toml")) {
            Some(path) if path.is_file() => Providers::load(&path),
            _ => Ok(Providers::builtin()),
        }
    }

    /// The built-in profiles with those of the file at `path` on top.
    pub fn load(path: &Path) -> Result<Providers, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Providers::parse(&text, path)
    }

    /// The built-in profiles with those of `text` (a provider file) on top; `origin` names
    /// it in errors.
    ///
    /// A profile of the file overrides the fields it sets of the built-in profile of the same
    /// name; a new name must set `wire` and `base_url`.
    ///
    /// ```
    /// use converge_llm::{Providers, WireFormat};
    ///
    /// let text = r#"
    /// [providers.ollama]
    /// base_url = "http://gpu-box:11434/v1"
    ///
    /// [providers.claude-proxy]
    /// wire = "anthropic"
    /// base_url = "https://llm-gateway.internal"
    /// api_key_env = "GATEWAY_KEY"
    /// "#;
    /// let providers = Providers::parse(text, "providers.toml").unwrap();
    /// assert_eq!(providers.profile("ollama").unwrap().base_url, "http://gpu-box:11434/v1");
    /// let proxy = providers.profile("claude-proxy").unwrap();
    /// assert_eq!(proxy.wire, WireFormat::Anthropic);
    /// assert!(proxy.key_required);
    ///
    /// let error = Providers::parse("[providers.x]\nbase_url = \"http://h\"\n", "p.toml").unwrap_err();
    /// assert_eq!(error.to_string(), "p.toml: provider `x` is new, so it needs `wire` (openai or anthropic)");
    /// ```
    pub fn parse(text: &str, origin: impl AsRef<Path>) -> Result<Providers, ConfigError> {
        let origin = origin.as_ref();
        let invalid = |detail: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            detail,
        };
        let raw: RawFile = toml::from_str(text).map_err(|error| {
            // The message quotes the offending line, which may hold a key: keep the summary.
            let place = error
                .span()
                .map(|span| line_of(text, span.start))
                .map(|line| format!("line {line}: "))
                .unwrap_or_default();
            invalid(format!("{place}{}", error.message()))
        })?;
        let mut providers = Providers::builtin();
        providers.origin = Some(origin.to_path_buf());
        for (name, raw) in raw.providers {
            let profile = match providers.profiles.remove(&name) {
                Some(builtin) => override_profile(builtin, raw),
                None => new_profile(&name, raw),
            }
            .map_err(invalid)?;
            check_base_url(&profile.base_url)
                .map_err(|error| invalid(format!("provider `{name}`: `base_url` {error}")))?;
            providers.profiles.insert(name, profile);
        }
        Ok(providers)
    }

    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The names of every profile, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// The provider file these profiles were read from, if any.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_deref()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

fn override_profile(mut profile: Profile, raw: RawProfile) -> Result<Profile, String> {
    if let Some(wire) = raw.wire {
        profile.wire = wire;
    }
    if let Some(url) = raw.base_url {
        profile.base_url = url;
    }
    if let Some(env) = raw.api_key_env {
        profile.api_key_env = Some(env);
    }
    profile.api_key = raw.api_key.and_then(ApiKey::new);
    if let Some(required) = raw.key_required {
        profile.key_required = required;
    }
    if let Some(field) = raw.max_tokens_field {
        profile.max_tokens_field = field;
    }
    Ok(profile)
}

fn new_profile(name: &str, raw: RawProfile) -> Result<Profile, String> {
    let Some(wire) = raw.wire else {
        return Err(format!(
            "provider `{name}` is new, so it needs `wire` (openai or anthropic)"
        ));
    };
    let Some(base_url) = raw.base_url else {
        return Err(format!("provider `{name}` is new, so it needs `base_url`"));
    };
    let api_key = raw.api_key.and_then(ApiKey::new);
    Ok(Profile {
        wire,
        base_url,
        key_required: raw
            .key_required
            .unwrap_or(raw.api_key_env.is_some() || api_key.is_some()),
        api_key_env: raw.api_key_env,
        api_key,
        max_tokens_field: raw.max_tokens_field.unwrap_or(MaxTokensField::MaxTokens),
    })
}

impl Profile {
    /// The key to send: the file's `api_key`, else the `api_key_env` variable read through
    /// `env`. `Err` says how to provide a key the profile requires.
    pub fn key(
        &self,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ApiKey>, String> {
        if let Some(key) = &self.api_key {
            return Ok(Some(key.clone()));
        }
        let key = self
            .api_key_env
            .as_deref()
            .and_then(&env)
            .and_then(ApiKey::new);
        match (key, &self.api_key_env) {
            (Some(key), _) => Ok(Some(key)),
            (None, Some(var)) if self.key_required => Err(format!(
                "provider `{name}` needs an API key: set {var} in the environment, or \
                 `api_key` for [providers.{name}] in the provider file"
            )),
            (None, None) if self.key_required => Err(format!(
                "provider `{name}` needs an API key: set `api_key_env` or `api_key` for \
                 [providers.{name}] in the provider file"
            )),
            (None, _) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_environment_or_the_file_and_a_missing_one_says_where() {
        let providers = Providers::builtin();
        let openai = providers.profile("openai").unwrap();
        let key = openai
            .key("openai", |var| {
                (var == "OPENAI_API_KEY").then(|| "sk-1".to_owned())
            })
            .unwrap();
        assert_eq!(key.unwrap().expose(), "sk-1");
        let missing = openai.key("openai", |_| None).unwrap_err();
        assert!(missing.contains("set OPENAI_API_KEY"), "{missing}");
        let ollama = providers.profile("ollama").unwrap();
        assert_eq!(ollama.key("ollama", |_| None).unwrap(), None);

        let text = "[providers.anthropic]\napi_key = \"sk-ant-file\"\n";
        let providers = Providers::parse(text, "p.toml").unwrap();
        let anthropic = providers.profile("anthropic").unwrap();
        let key = anthropic.key("anthropic", |_| None).unwrap().unwrap();
        assert_eq!(key.expose(), "sk-ant-file");
        assert!(!format!("{providers:?}").contains("sk-ant-file"));
    }

    #[test]
    fn a_bad_file_is_refused_without_quoting_its_lines() {
        let text = "[providers.openai]\napi_key = \"sk-secret\"\nbase_url = 7\n";
        let error = Providers::parse(text, "p.toml").unwrap_err().to_string();
        assert!(error.starts_with("p.toml: line 3: "), "{error}");
        assert!(!error.contains("sk-secret"), "{error}");
        let error = Providers::parse("[providers.openai]\nbase_url = \"ftp://x\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("must start with http"), "{error}");
        let error = Providers::parse("[providers.openai]\ncolour = 1\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("colour"), "{error}");
    }
}
