//! `kiln login` and `kiln logout`: saving and forgetting a farm's profile.

use kiln_proto::v1::ListJobsRequest;
use serde::Serialize;

use crate::cli::LoginArgs;
use crate::connect::{Gateway, Target};
use crate::error::CliError;
use crate::output;
use crate::profiles::{self, DEFAULT_PROFILE, Profile};

/// What login and logout report; never the token.
#[derive(Debug, Serialize)]
struct Saved<'a> {
    profile: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<&'a str>,
    config: String,
    changed: bool,
}

pub async fn login(args: LoginArgs, profile: Option<&str>) -> Result<(), CliError> {
    let name = profile_or_default(profile);
    let token = args.token.trim();
    let target = Target {
        url: crate::connect::with_scheme(args.gateway.trim()),
        token: Some(token.to_owned()).filter(|t| !t.is_empty()),
        ca: args.ca.clone(),
    };
    if !args.no_check {
        // The cheapest call any role may make: proves the URL and the token.
        let gateway = Gateway::connect_to(&target).await?;
        let request = ListJobsRequest {
            page_size: 1,
            ..Default::default()
        };
        gateway
            .jobs
            .clone()
            .list_jobs(request)
            .await
            .map_err(CliError::rpc("checking the token"))?;
    }
    let path = profiles::path()?;
    let mut saved = profiles::load(&path)?;
    saved.profiles.insert(
        name.to_owned(),
        Profile {
            gateway: target.url.clone(),
            token: token.to_owned(),
            ca: args.ca,
        },
    );
    profiles::save(&path, &saved)?;
    say!(
        "saved profile {name:?} for {} in {}",
        target.url,
        path.display()
    );
    output::emit(&Saved {
        profile: name,
        gateway: Some(&target.url),
        config: path.display().to_string(),
        changed: true,
    });
    Ok(())
}

pub fn logout(profile: Option<&str>) -> Result<(), CliError> {
    let name = profile_or_default(profile);
    let path = profiles::path()?;
    let mut saved = profiles::load(&path)?;
    let removed = saved.profiles.remove(name).is_some();
    if removed {
        profiles::save(&path, &saved)?;
        say!("forgot profile {name:?}");
    } else {
        say!("no profile {name:?} was saved");
    }
    output::emit(&Saved {
        profile: name,
        gateway: None,
        config: path.display().to_string(),
        changed: removed,
    });
    Ok(())
}

fn profile_or_default(profile: Option<&str>) -> &str {
    profile
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_PROFILE)
}
