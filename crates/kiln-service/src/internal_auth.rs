//! Who may call an internal service. The scheduler and the assets service
//! serve the gateway, each other and workers, never the public, so every
//! call but a health check carries a credential:
//!
//! - the farm's service token (metadata `kiln-service-token`): the gateway,
//!   the scheduler and the assets collector present it. Only such a call may
//!   reach a job API and name the user it acts for (`kiln-owner`,
//!   `kiln-role`);
//! - a worker's join token (`kiln-join-token`), or, on a farm with mutual TLS
//!   and no join token, the farm certificate the connection was opened with
//!   (the TLS layer has already refused connections without one).
//!
//! Each service lists which of them may call what ([`Policy`]); a path it
//! does not list admits services only. Secrets are compared as SHA-256
//! digests in constant time, so neither their content nor their length
//! leaks through timing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kiln_proto::metadata;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::service::Routes;

/// The shortest secret a service accepts: anything shorter is a typo or a
/// placeholder, not a credential.
pub const MIN_SECRET_CHARS: usize = 16;

/// The credentials an internal service (scheduler, assets) checks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InternalAuthArgs {
    /// Farm-internal secret the gateway, the scheduler and the assets service present to each other (metadata kiln-service-token); required. `kiln dev` and the deploy scripts generate it
    #[arg(long, env = "KILN_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// Secret workers present (metadata kiln-join-token); required unless --tls-client-ca makes every worker present a farm certificate instead
    #[arg(long, env = "KILN_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
}

/// Why a service refuses to start with the credentials it was given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error(
        "--service-token (KILN_SERVICE_TOKEN) is required: without it anyone who reaches this service could act as any user (generate one, e.g. `openssl rand -hex 32`; `kiln dev` and deploy/gen-env.sh do)"
    )]
    NoServiceToken,
    #[error(
        "workers cannot authenticate: set --join-token (KILN_JOIN_TOKEN), or --tls-client-ca so that workers present a farm certificate"
    )]
    NoWorkerCredential,
    #[error("{flag} is shorter than {MIN_SECRET_CHARS} characters")]
    TooShort { flag: &'static str },
}

impl InternalAuthArgs {
    /// The credentials to check; `mutual_tls` says whether the TLS layer
    /// already refuses connections without a farm certificate.
    pub fn load(&self, mutual_tls: bool) -> Result<Credentials, CredentialError> {
        let service = self
            .service_token
            .as_deref()
            .ok_or(CredentialError::NoServiceToken)?;
        let service = Secret::new(service, "--service-token")?;
        let join = self
            .join_token
            .as_deref()
            .map(|token| Secret::new(token, "--join-token"))
            .transpose()?;
        if join.is_none() && !mutual_tls {
            return Err(CredentialError::NoWorkerCredential);
        }
        Ok(Credentials {
            service,
            join,
            certified_workers: mutual_tls,
        })
    }
}

/// A secret, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn new(value: &str, flag: &'static str) -> Result<Self, CredentialError> {
        if value.trim().chars().count() < MIN_SECRET_CHARS {
            return Err(CredentialError::TooShort { flag });
        }
        Ok(Self(Sha256::digest(value.trim().as_bytes()).into()))
    }

    /// Whether two secrets are the same, in constant time.
    pub fn same_as(&self, other: &Secret) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Whether `presented` is this secret, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.trim_ascii()).into();
        self.0.ct_eq(&presented).into()
    }
}

/// The credentials a service checks its callers against.
#[derive(Debug, Clone)]
pub struct Credentials {
    service: Secret,
    join: Option<Secret>,
    /// With mutual TLS and no join token, a connection's farm certificate
    /// is a worker's credential.
    certified_workers: bool,
}

/// Who a call comes from, as its credential says; put in the request's
/// extensions for the service's own use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The gateway, the scheduler or the assets service.
    Service,
    Worker,
}

impl Credentials {
    /// Who presents `headers`, if anyone the farm knows.
    pub fn caller(&self, headers: &http::HeaderMap) -> Option<Caller> {
        let presented = |key: &str| headers.get(key).map(http::HeaderValue::as_bytes);
        if presented(metadata::SERVICE_TOKEN).is_some_and(|t| self.service.matches(t)) {
            return Some(Caller::Service);
        }
        let worker = match (&self.join, presented(metadata::JOIN_TOKEN)) {
            (Some(join), Some(token)) => join.matches(token),
            (Some(_), None) => false,
            (None, _) => self.certified_workers,
        };
        worker.then_some(Caller::Worker)
    }
}

/// Who may call a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Anyone: health checks, so orchestrators need no secret.
    Anyone,
    Services,
    Workers,
    ServicesAndWorkers,
}

/// One service's table: which callers each path (or path prefix) admits,
/// and whether workers may name the user they act for.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub routes: &'static [(&'static str, Admit)],
    /// At the assets service a worker stores a task's outputs as the job's
    /// owner's files; it reads every file anyway, so naming an owner grants
    /// it nothing. Elsewhere only services name owners.
    pub workers_name_owners: bool,
}

/// Paths every internal service serves to anyone.
const HEALTH: &str = "/grpc.health.v1.Health/";

impl Policy {
    fn admit(&self, path: &str) -> Admit {
        if path.starts_with(HEALTH) {
            return Admit::Anyone;
        }
        self.routes
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(Admit::Services, |(_, admit)| *admit)
    }

    /// Whether `caller` (None: no known credential) may make a call to
    /// `path` with `headers`; the refusal says why.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        caller: Option<Caller>,
    ) -> Result<(), Status> {
        let admit = self.admit(path);
        if admit == Admit::Anyone {
            return Ok(());
        }
        let Some(caller) = caller else {
            return Err(Status::unauthenticated(format!(
                "{path} is internal: a call needs the farm's service token ({}) or a worker's join token ({})",
                metadata::SERVICE_TOKEN,
                metadata::JOIN_TOKEN
            )));
        };
        let admitted = match (admit, caller) {
            (Admit::Anyone | Admit::ServicesAndWorkers, _) => true,
            (Admit::Services, Caller::Service) | (Admit::Workers, Caller::Worker) => true,
            (Admit::Services, Caller::Worker) | (Admit::Workers, Caller::Service) => false,
        };
        if !admitted {
            return Err(Status::permission_denied(format!(
                "{path} is not for {}",
                match caller {
                    Caller::Service => "farm services",
                    Caller::Worker => "workers",
                }
            )));
        }
        let names_user =
            headers.contains_key(metadata::OWNER) || headers.contains_key(metadata::ROLE);
        if names_user && caller == Caller::Worker && !self.workers_name_owners {
            return Err(Status::permission_denied(format!(
                "{} and {} are accepted only from the gateway and farm services",
                metadata::OWNER,
                metadata::ROLE
            )));
        }
        Ok(())
    }
}

/// `routes` behind the check of their callers: refused calls never reach a
/// service; admitted ones carry their [`Caller`] in their extensions.
pub fn guard(routes: Routes, credentials: Credentials, policy: Policy) -> Routes {
    let gate = Arc::new(Gate {
        credentials,
        policy,
    });
    let router = routes
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(gate, check));
    Routes::from(router)
}

struct Gate {
    credentials: Credentials,
    policy: Policy,
}

async fn check(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let caller = gate.credentials.caller(request.headers());
    let path = request.uri().path().to_owned();
    if let Err(status) = gate.policy.check(&path, request.headers(), caller) {
        tracing::warn!(path, code = ?status.code(), reason = status.message(), "refused a call");
        return status.into_http::<axum::body::Body>();
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "service-secret-0123456789";
    const JOIN: &str = "join-secret-0123456789ab";

    fn credentials(join: Option<&str>, mutual_tls: bool) -> Result<Credentials, CredentialError> {
        InternalAuthArgs {
            service_token: Some(SERVICE.into()),
            join_token: join.map(str::to_owned),
        }
        .load(mutual_tls)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_str(v).expect("ascii"),
                )
            })
            .collect()
    }

    const SCHEDULER: Policy = Policy {
        routes: &[
            ("/kiln.v1.JobService/", Admit::Services),
            ("/kiln.v1.WorkerService/", Admit::Workers),
        ],
        workers_name_owners: false,
    };

    #[test]
    fn a_service_needs_a_service_token_and_a_way_for_workers_to_authenticate() {
        let none = InternalAuthArgs::default();
        assert_eq!(none.load(true).err(), Some(CredentialError::NoServiceToken));
        let service_only = InternalAuthArgs {
            service_token: Some(SERVICE.into()),
            join_token: None,
        };
        assert_eq!(
            service_only.load(false).err(),
            Some(CredentialError::NoWorkerCredential)
        );
        assert!(
            service_only.load(true).is_ok(),
            "mutual TLS authenticates workers"
        );
        let short = InternalAuthArgs {
            service_token: Some("secret".into()),
            join_token: Some(JOIN.into()),
        };
        assert!(matches!(
            short.load(false),
            Err(CredentialError::TooShort { .. })
        ));
    }

    #[test]
    fn callers_are_told_apart_by_their_secrets() -> Result<(), CredentialError> {
        let creds = credentials(Some(JOIN), false)?;
        assert_eq!(
            creds.caller(&headers(&[("kiln-service-token", SERVICE)])),
            Some(Caller::Service)
        );
        assert_eq!(
            creds.caller(&headers(&[("kiln-join-token", JOIN)])),
            Some(Caller::Worker)
        );
        assert_eq!(
            creds.caller(&headers(&[("kiln-service-token", JOIN)])),
            None,
            "the join token is no service token"
        );
        assert_eq!(
            creds.caller(&headers(&[("kiln-join-token", "guess")])),
            None
        );
        assert_eq!(creds.caller(&headers(&[])), None);
        // With mutual TLS and no join token, the certificate is the worker's credential.
        let certified = credentials(None, true)?;
        assert_eq!(certified.caller(&headers(&[])), Some(Caller::Worker));
        // With both, the join token is still required.
        let both = credentials(Some(JOIN), true)?;
        assert_eq!(both.caller(&headers(&[])), None);
        Ok(())
    }

    #[test]
    fn only_services_reach_job_apis_and_name_owners() {
        let list = "/kiln.v1.JobService/ListJobs";
        let owner = headers(&[("kiln-owner", "x")]);
        let refused = |caller| SCHEDULER.check(list, &owner, caller).map_err(|s| s.code());
        assert_eq!(refused(None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            refused(Some(Caller::Worker)),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(refused(Some(Caller::Service)), Ok(()));
        let session = "/kiln.v1.WorkerService/Session";
        assert!(
            SCHEDULER
                .check(session, &headers(&[]), Some(Caller::Worker))
                .is_ok()
        );
        assert_eq!(
            SCHEDULER
                .check(session, &owner, Some(Caller::Worker))
                .map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied),
            "a worker never names an owner at the scheduler"
        );
        assert_eq!(
            SCHEDULER
                .check(session, &headers(&[]), Some(Caller::Service))
                .map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn health_is_public_and_unlisted_paths_admit_services_only() {
        let none = headers(&[]);
        assert!(
            SCHEDULER
                .check("/grpc.health.v1.Health/Check", &none, None)
                .is_ok()
        );
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(SCHEDULER.check(reflection, &none, None).is_err());
        assert!(
            SCHEDULER
                .check(reflection, &none, Some(Caller::Worker))
                .is_err()
        );
        assert!(
            SCHEDULER
                .check(reflection, &none, Some(Caller::Service))
                .is_ok()
        );
    }
}
