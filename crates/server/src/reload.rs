//! SIGHUP: certificates, TURN secrets and JWT keys change without a restart and without
//! dropping a session.
//!
//! The parts that use them read them through shared handles ([`Live`], [`CertSlot`], the
//! TURN workers' `watch` channel); [`Reloader::reload`] reads the configuration again
//! (the same flags and variables, the `--config` file as it is now), builds every new
//! value first and swaps them in only if all were built: a reload that fails changes
//! nothing. Settings a reload cannot apply (listeners, limits, …) are named in the log
//! as needing a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use firstcall_turn::auth::{Authenticator, Secret};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::answer_token::AnswerTokens;
use crate::config::{ServeArgs, ServeConfig, TlsFiles};
use crate::tokens::{self, Tokens};
use crate::ServeError;

/// A value every reader sees replaced at once.
pub type Live<T> = Arc<ArcSwap<T>>;

/// A new [`Live`] holding `value`.
pub fn live<T>(value: T) -> Live<T> {
    Arc::new(ArcSwap::from_pointee(value))
}

/// The certificate every TLS listener (TURN over TLS, `--http-tls`) presents: a
/// resolver, so one swap reaches every acceptor, and handshakes under way keep theirs.
#[derive(Debug)]
pub struct CertSlot(ArcSwap<CertifiedKey>);

impl CertSlot {
    /// Load `files`; the error names the file and what is wrong.
    pub fn load(files: &TlsFiles) -> Result<Arc<CertSlot>, ServeError> {
        Ok(Arc::new(CertSlot(ArcSwap::new(certified_key(files)?))))
    }

    /// A TLS acceptor presenting this slot's certificate, whatever it is at handshake time.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Read a PEM certificate chain and its key, and check they belong together.
fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, ServeError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (&files.cert, &files.key);
    let err = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        ServeError::Tls(format!("{what} {}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| err("cannot open certificate", cert, &e))?,
    ))
    .collect::<Result<_, _>>()
    .map_err(|e| err("cannot parse certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(err("no certificate found in", cert, &"empty PEM"));
    }
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| err("cannot open key", key, &e))?,
    ))
    .map_err(|e| err("cannot parse key", key, &e))?
    .ok_or_else(|| err("no private key found in", key, &"empty PEM"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| err("unusable key", key, &e))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| ServeError::Tls(format!("certificate and key do not match: {e}")))?;
    Ok(Arc::new(ck))
}

/// The app's token verifier, replaced on reload, for the hub.
pub struct LiveTokens(pub Live<Tokens>);

impl firstcall_signal::hub::TokenVerifier for LiveTokens {
    fn verify(&self, token: &str, now_unix: u64) -> Result<firstcall_signal::protocol::UserId, String> {
        self.0.load().user(token, now_unix).map_err(|r| r.to_string())
    }
}

/// What a reload swaps, and how it reads the configuration again.
pub struct Reloader {
    /// The flags and variables the process started with (the file is read again).
    pub args: ServeArgs,
    /// The configuration in force.
    pub current: ServeConfig,
    /// Verifies the app's tokens.
    pub tokens: Live<Tokens>,
    /// The newest TURN secret, which mints credentials.
    pub minting: Live<Secret>,
    /// Answer tokens (keyed from the TURN secret).
    pub answers: Live<AnswerTokens>,
    /// The TURN workers' authenticator.
    pub auth: Option<tokio::sync::watch::Sender<Authenticator>>,
    /// The certificate of the TLS listeners.
    pub cert: Option<Arc<CertSlot>>,
    /// Reloads by result, for `/metrics`.
    pub counts: Arc<ReloadCounts>,
}

/// `firstcall_config_reloads_total` by result.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// Applied.
    pub ok: AtomicU64,
    /// Refused: the configuration in force was kept.
    pub failed: AtomicU64,
}

impl ReloadCounts {
    /// Prometheus text.
    pub fn render(&self) -> String {
        format!(
            "# HELP firstcall_config_reloads_total Configuration reloads (SIGHUP) by result; a failed one changes nothing.\n\
             # TYPE firstcall_config_reloads_total counter\n\
             firstcall_config_reloads_total{{result=\"ok\"}} {}\n\
             firstcall_config_reloads_total{{result=\"failed\"}} {}\n",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration no longer resolves.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A certificate or key could not be used.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// JWT settings could not be used.
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    /// A change only a restart applies, to a setting the running server depends on.
    #[error("{0} changed: restart to apply it (nothing was reloaded)")]
    NeedsRestart(&'static str),
}

impl Reloader {
    /// Read the configuration again and apply what changed; on error nothing changes.
    /// Returns what was reloaded and the changed settings that need a restart.
    pub async fn reload(&mut self) -> Result<(Vec<&'static str>, Vec<&'static str>), ReloadError> {
        let result = self.try_reload().await;
        match &result {
            Ok(_) => self.counts.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counts.failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn try_reload(&mut self) -> Result<(Vec<&'static str>, Vec<&'static str>), ReloadError> {
        let new = self.args.clone().resolve()?;
        let old = &self.current;
        // Build everything first.
        let key_kind = |c: &ServeConfig| {
            (
                c.dev,
                c.jwt_secret.is_some(),
                c.jwt_public_key.is_some(),
                c.jwks_url.clone(),
            )
        };
        if key_kind(&new) != key_kind(old) {
            return Err(ReloadError::NeedsRestart(
                "the kind of JWT key (--dev, --jwt-secret, --jwt-public-key, --jwks-url)",
            ));
        }
        if new.tls.is_some() != old.tls.is_some() {
            return Err(ReloadError::NeedsRestart("TLS on or off (--tls-cert, --tls-key)"));
        }
        let claims = tokens::Claims {
            audience: new.jwt_audience.clone(),
            issuer: new.jwt_issuer.clone(),
            user_claim: Some(new.jwt_user_claim.clone()),
            algorithms: tokens::parse_algorithms(&new.jwt_algorithms)?,
        };
        let tokens = match (&new.jwt_secret, &new.jwt_public_key, self.tokens.load().jwks().cloned()) {
            (Some(s), _, _) => Some(Tokens::with_secret(s, claims)?),
            (None, Some(p), _) => Some(Tokens::with_public_key(p, claims)?),
            (None, None, Some(jwks)) => {
                // The provider's current keys; not fatal, as at start.
                if let Err(e) = jwks.fetch().await {
                    tracing::warn!(error = %e, "reload: JWKS not fetched again; the keys fetched before stay");
                }
                Some(Tokens::with_jwks(jwks, claims)?)
            }
            (None, None, None) => None,
        };
        let cert = match (&new.tls, &self.cert) {
            (Some(files), Some(_)) => Some(certified_key(files)?),
            _ => None,
        };
        let secrets: Vec<Secret> = new.turn_secrets.iter().map(|s| Secret::new(s.clone())).collect();
        let first = new.turn_secrets.first().cloned().unwrap_or_default();

        // Then swap.
        let mut reloaded = vec![];
        if let Some(t) = tokens {
            self.tokens.store(Arc::new(t));
            reloaded.push("JWT keys and claims");
        }
        if let (Some(ck), Some(slot)) = (cert, &self.cert) {
            slot.0.store(ck);
            reloaded.push("TLS certificate");
        }
        if new.turn_secrets != old.turn_secrets || new.static_users != old.static_users {
            self.minting.store(Arc::new(Secret::new(first.clone())));
            self.answers.store(Arc::new(AnswerTokens::from_turn_secret(&first)));
            if let Some(auth) = &self.auth {
                // The realm stays: clients hold nonces and keys for it (a restart changes it).
                auth.send_replace(Authenticator::new(old.realm.clone(), secrets, new.static_users.clone()));
            }
            reloaded.push("TURN secrets and static users");
        }
        let restart = needs_restart(old, &new);
        self.current = new;
        Ok((reloaded, restart))
    }
}

/// Settings that changed but take a restart to apply.
fn needs_restart(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    restart_only(old)
        .into_iter()
        .zip(restart_only(new))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

/// Every setting a reload does not apply, with its value as text. The configuration is
/// destructured without `..`: a new field of `ServeConfig` does not compile until it is
/// sorted here, as reloaded or as restart-only.
fn restart_only(c: &ServeConfig) -> Vec<(&'static str, String)> {
    macro_rules! restart_only {
        ($($field:ident),* $(,)?) => {{
            let ServeConfig {
                // Reloaded (or, for a change of kind, refused by `try_reload`).
                tls: _,
                turn_secrets: _,
                secret_generated: _,
                jwt_secret: _,
                jwt_public_key: _,
                jwks_url: _,
                dev: _,
                jwt_audience: _,
                jwt_issuer: _,
                jwt_user_claim: _,
                jwt_algorithms: _,
                static_users: _,
                $($field),*
            } = c;
            vec![$((stringify!($field), format!("{:?}", $field))),*]
        }};
    }
    restart_only!(
        http_listen,
        turn_listen,
        turn_tls_listen,
        realm,
        external_ip,
        relay_ip,
        relay_ports,
        allow_peers,
        deny_peers,
        data_dir,
        threads,
        max_allocations,
        max_allocations_per_user,
        log,
        session_ttl,
        slow_socket_queue,
        ring_timeout,
        drain_timeout,
        redis_url,
        redis_prefix,
        redis_checkpoint_every,
        webhook_url,
        webhook_secret,
        credential_ttl,
        max_connections,
        max_connections_per_ip,
        http_header_timeout,
        webhook_concurrency,
        webhook_queue,
        webhook_pair_interval,
        webhook_pair_burst,
        webhook_callee_burst,
        webhook_callee_window,
        webhook_caller_burst,
        webhook_max_entries,
        webhook_attempts,
        webhook_timeout,
        presence,
        metrics_listen,
        log_format,
        max_calls_per_user,
        max_unacked_frames,
        max_unacked_bytes,
        max_held_signals,
        max_held_bytes,
        max_held_signals_per_user,
        max_held_bytes_per_user,
        max_ringing_per_callee,
        max_devices_per_user,
        max_push_devices,
        max_ended_calls,
        max_invite_pairs,
        turn_error_rate,
        turn_error_burst,
        turn_error_table,
        max_bps,
        user_max_bps,
        turn_stream_queue,
        turn_stream_timeout,
        turn_peer_grant_ttl,
        turn_io,
        xdp,
        ice_servers,
        public_host,
        no_turn,
        http_tls,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn resolve(extra: &[&str]) -> ServeConfig {
        let dir = std::env::temp_dir().join(format!("firstcall-reload-unit-{}", std::process::id()));
        let dir = dir.to_str().expect("a UTF-8 temp dir").to_owned();
        let base = ["serve", "--data-dir", dir.as_str(), "--turn-secret", "t1"];
        Cli::try_parse_from(base.iter().chain(extra))
            .expect("flags parse")
            .args
            .resolve_with(None)
            .expect("settings resolve")
    }

    #[test]
    fn a_changed_setting_a_reload_cannot_apply_is_named_and_a_reloaded_one_is_not() {
        let old = resolve(&["--jwt-secret", "k1"]);
        // Reloaded: keys, secrets, claims.
        let reloaded = resolve(&["--jwt-secret", "k2", "--jwt-audience", "app"]);
        assert_eq!(needs_restart(&old, &reloaded), Vec::<&str>::new());
        // Restart-only, including settings the first version of this list forgot.
        let restart = resolve(&[
            "--jwt-secret",
            "k1",
            "--webhook-attempts",
            "3",
            "--turn-stream-queue",
            "70000",
            "--turn-io",
            "uring",
        ]);
        assert_eq!(
            needs_restart(&old, &restart),
            vec!["webhook_attempts", "turn_stream_queue", "turn_io"]
        );
    }
}
