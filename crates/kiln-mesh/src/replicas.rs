//! The replicas an upstream lists in etcd, as the balancer's discovery
//! stream: each listing becomes an endpoint (`endpoint.rs`), each removal
//! takes one away.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use kiln_discovery::ListingChange;
use tokio::sync::mpsc;
use tower::discover::Change;

use crate::endpoint::{EndpointFactory, EndpointService};

pub struct Replicas {
    listings: mpsc::Receiver<ListingChange>,
    factory: EndpointFactory,
}

impl Replicas {
    pub fn new(listings: mpsc::Receiver<ListingChange>, factory: EndpointFactory) -> Self {
        Self { listings, factory }
    }
}

impl Stream for Replicas {
    type Item = Result<Change<String, EndpointService>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let change = match self.listings.poll_recv(cx) {
                Poll::Ready(Some(change)) => change,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match change {
                ListingChange::Listed(listing) => match self.factory.build(&listing) {
                    Ok(endpoint) => {
                        return Poll::Ready(Some(Ok(Change::Insert(listing.instance, endpoint))));
                    }
                    Err(error) => {
                        tracing::warn!(upstream = self.factory.upstream, endpoint = %listing.instance, %error, "cannot dial a listed replica; skipping it");
                    }
                },
                ListingChange::Unlisted(instance) => {
                    return Poll::Ready(Some(Ok(Change::Remove(instance))));
                }
            }
        }
    }
}
