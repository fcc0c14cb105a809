//! `kiln.v1.TokenService`: token administration, for admins only.

use kiln_proto::v1 as pb;
use kiln_service::paging::{self, PageSize};
use tonic::{Request, Response, Status};

use crate::auth::{self, Role};
use crate::tokens::TokenStore;

/// Tokens a page (AIP-158).
const TOKEN_PAGE: PageSize = PageSize {
    default: 1000,
    max: 1000,
};

#[derive(Clone)]
pub struct TokenApi {
    store: TokenStore,
}

impl TokenApi {
    pub fn new(store: TokenStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Admin)?;
        let request = request.into_inner();
        let role = Role::from_proto(request.role).ok_or_else(|| {
            Status::invalid_argument("role: must be ROLE_VIEWER, ROLE_SUBMITTER or ROLE_ADMIN")
        })?;
        let max_priority = match request.max_priority {
            0 => auth::DEFAULT_MAX_PRIORITY,
            granted => granted,
        };
        let (token, secret) = self.store.create(&request.name, role, max_priority).await?;
        tracing::info!(by = %caller.name, token_id = %token.id, name = %token.name, role = role.as_str(), "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        auth::principal(&request)?.require(Role::Admin)?;
        let message = request.get_ref();
        let size = TOKEN_PAGE.of(message.page_size);
        let after = paging::decode("tokens", &message.page_token)?
            .map(|position| paging::parse_time_and_id(&position))
            .transpose()?;
        let tokens = self
            .store
            .list(message.include_revoked, size as i64 + 1, after)
            .await?;
        let (tokens, next_page_token) = paging::page(
            "tokens",
            tokens,
            size,
            usize::MAX,
            |_| 0,
            |token| {
                let created = token.created_at.unwrap_or_default();
                paging::time_and_id(created.seconds, created.nanos, &token.id)
            },
        );
        Ok(Response::new(pb::ListTokensResponse {
            tokens,
            next_page_token,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Admin)?;
        let token = self.store.revoke(&request.get_ref().token_id).await?;
        tracing::info!(by = %caller.name, token_id = %token.id, "token revoked");
        Ok(Response::new(token))
    }
}
