//! `kiln token create|list|revoke`.

use kiln_proto::v1 as pb;
use kiln_proto::v1::token_service_client::TokenServiceClient;

use crate::cli::{RoleArg, TokenCommand};
use crate::connect::Gateway;
use crate::error::CliError;
use crate::format::{table, timestamp};

pub async fn run(command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Create(args) => {
            let mut client = client(&args.gateway).await?;
            let role = match args.role {
                RoleArg::Viewer => pb::Role::Viewer,
                RoleArg::Submitter => pb::Role::Submitter,
                RoleArg::Admin => pb::Role::Admin,
            };
            let request = pb::CreateTokenRequest {
                name: args.name,
                role: role as i32,
                max_priority: args.max_priority.unwrap_or(0),
            };
            let created = client
                .create_token(request)
                .await
                .map_err(CliError::rpc("creating a token"))?
                .into_inner();
            if let Some(token) = &created.token {
                eprintln!(
                    "created token {} for {:?} ({})",
                    token.id,
                    token.name,
                    role_name(token.role())
                );
                eprintln!("the secret below is shown only this once:");
            }
            // In JSON mode the secret is in the JSON only, never also on stderr.
            if crate::output::is_json() {
                crate::output::emit(&created);
            } else {
                say!("{}", created.secret);
            }
        }
        TokenCommand::List(args) => {
            let client = client(&args.gateway).await?;
            let tokens = crate::pages::all("tokens", |page_token| {
                let mut client = client.clone();
                async move {
                    let request = pb::ListTokensRequest {
                        include_revoked: args.all,
                        page_token,
                        ..Default::default()
                    };
                    let page = client
                        .list_tokens(request)
                        .await
                        .map_err(CliError::rpc("listing tokens"))?
                        .into_inner();
                    Ok((page.tokens, page.next_page_token))
                }
            })
            .await?;
            let mut rows = table(["ID", "NAME", "ROLE", "MAX PRIORITY", "CREATED", "REVOKED"]);
            for token in &tokens {
                rows.add_row([
                    token.id.clone(),
                    token.name.clone(),
                    role_name(token.role()).to_owned(),
                    match token.role() {
                        pb::Role::Admin => "any".to_owned(),
                        _ => token.max_priority.to_string(),
                    },
                    timestamp(token.created_at.as_ref()),
                    token
                        .revoked_at
                        .as_ref()
                        .map_or_else(String::new, |t| timestamp(Some(t))),
                ]);
            }
            say!("{rows}");
            crate::output::emit(&serde_json::json!({"tokens": tokens}));
        }
        TokenCommand::Revoke(args) => {
            let mut client = client(&args.gateway).await?;
            let token = client
                .revoke_token(pb::RevokeTokenRequest { token_id: args.id })
                .await
                .map_err(CliError::rpc("revoking a token"))?
                .into_inner();
            say!("revoked token {} ({:?})", token.id, token.name);
            crate::output::emit(&token);
        }
    }
    Ok(())
}

type Client = TokenServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        kiln_asset_client::CallCredentials,
    >,
>;

async fn client(args: &crate::cli::GatewayArgs) -> Result<Client, CliError> {
    let gateway = Gateway::connect(args).await?;
    Ok(TokenServiceClient::with_interceptor(
        gateway.channel,
        gateway.credentials,
    ))
}

fn role_name(role: pb::Role) -> &'static str {
    match role {
        pb::Role::Viewer => "viewer",
        pb::Role::Submitter => "submitter",
        pb::Role::Admin => "admin",
        pb::Role::Unspecified => "?",
    }
}
