//! A fake SPIRE agent: the generated tonic server of `proto/spiffe/workload/workload.proto`
//! on a unix socket. No SPIRE agent can run here, so this stands in for one; what it
//! serves is set by the test through a `watch` channel (rotation on command), and it
//! records the JWT-SVID requests it answered.
//!
//! Included with `#[path = "common/agent.rs"] mod agent;` by the tests that need it, so
//! the other test binaries do not compile it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tessera::workload::pb;
use tessera::workload::pb::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::{Request, Response, Status};

/// What the fake agent currently serves. `None` halves are not offered (the stream or
/// call answers UNAVAILABLE, as an agent with no registration entry would refuse).
#[derive(Clone, Default)]
pub struct AgentState {
    pub x509: Option<pb::X509svidResponse>,
    pub jwt_bundles: Option<pb::JwtBundlesResponse>,
    /// The default identity's JWT-SVID, returned for any audience (a real agent mints
    /// one per request; the test checks the audience asked for in `jwt_requests`).
    pub jwt_svid: Option<pb::Jwtsvid>,
}

/// The audiences and SPIFFE IDs of the `FetchJWTSVID` calls answered so far.
pub type JwtRequests = Arc<Mutex<Vec<pb::JwtsvidRequest>>>;

struct FakeAgent {
    state: watch::Receiver<AgentState>,
    jwt_requests: JwtRequests,
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn offered<T>(part: Option<T>) -> Result<T, Status> {
    part.ok_or_else(|| Status::unavailable("no identity issued"))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for FakeAgent {
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;
    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let s = WatchStream::new(self.state.clone()).map(|st| offered(st.x509));
        Ok(Response::new(Box::pin(s)))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let s = WatchStream::new(self.state.clone()).map(|st| {
            let x509 = offered(st.x509)?;
            Ok(pb::X509BundlesResponse {
                crl: vec![],
                bundles: [(
                    "spiffe://example.org".to_owned(),
                    x509.svids[0].bundle.clone(),
                )]
                .into(),
            })
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let svid = offered(self.state.borrow().jwt_svid.clone())?;
        self.jwt_requests.lock().unwrap().push(req);
        Ok(Response::new(pb::JwtsvidResponse { svids: vec![svid] }))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let s = WatchStream::new(self.state.clone()).map(|st| offered(st.jwt_bundles));
        Ok(Response::new(Box::pin(s)))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("not in the fake agent"))
    }
}

/// Serves the fake agent on a unix socket at `path` until the runtime ends.
pub fn serve_agent(path: &std::path::Path, state: watch::Receiver<AgentState>) -> JwtRequests {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let jwt_requests = JwtRequests::default();
    let agent = FakeAgent {
        state,
        jwt_requests: jwt_requests.clone(),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(agent))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    jwt_requests
}
