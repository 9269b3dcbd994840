//! The proxy-wasm adapter: configuration loading and the request path. All decisions are made
//! by the host-independent modules; this file only moves bytes between them and the host.

use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::config;
use crate::error::AuthError;
use crate::host;
use crate::metadata;
use crate::stats::Counter;
use crate::strategy::{Edit, Plan, Plans, BACKEND_NAME_SOURCES};

/// Metric ids, by [`Counter::index`]; `None` when the host refused to define one.
type Counters = [Option<u32>; Counter::ALL.len()];

fn define_counters() -> Counters {
    Counter::ALL.map(|c| host::define_counter(c.name()).ok())
}

fn count(counters: &Counters, counter: Counter) {
    if let Some(Some(id)) = counters.get(counter.index()) {
        // A failed increment loses one sample; it must not fail the request.
        let _ = host::increment(*id);
    }
}

/// What every request of one plugin configuration shares.
struct Runtime {
    plans: Plans,
    counters: Counters,
}

#[derive(Default)]
pub struct Root {
    runtime: Option<Rc<Runtime>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        // Format only what Envoy's `wasm` logger will print.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let json = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                error!("outgoing-auth: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        let counters = define_counters();
        match config::load(&json, &env) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    warn!("outgoing-auth: {warning}");
                }
                let plans = Plans::build(&loaded.config);
                info!(
                    "outgoing-auth: configuration loaded: {} backend(s), default strategy {}",
                    loaded.config.outgoing_auth.backends.len(),
                    loaded
                        .config
                        .outgoing_auth
                        .default
                        .as_ref()
                        .map_or("unauthenticated", |s| s.type_name())
                );
                self.runtime = Some(Rc::new(Runtime { plans, counters }));
                true
            }
            Err(problems) => {
                for problem in &problems {
                    if problem.rule.is_warning() {
                        warn!("outgoing-auth: {problem}");
                    } else {
                        error!("outgoing-auth: {problem}");
                    }
                }
                let errors = problems.iter().filter(|p| !p.rule.is_warning()).count();
                error!("outgoing-auth: configuration rejected: {errors} problem(s)");
                count(&counters, Counter::ConfigRejected);
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            runtime: self.runtime.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    runtime: Option<Rc<Runtime>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match &self.runtime {
            Some(runtime) => runtime.on_request_headers(),
            // Envoy does not run a plugin whose configuration was refused; fail closed anyway.
            None => reply(&AuthError::HostCall {
                operation: "load the configuration",
            }),
        }
    }
}

impl Runtime {
    fn on_request_headers(&self) -> Action {
        let backend = if self.plans.selects_by_backend() {
            backend_name()
        } else {
            None
        };
        let plan = self.plans.for_backend(backend.as_deref());
        let token = match plan.token_path() {
            Some(path) => host::get_property(path).map_err(|status| {
                debug!("outgoing-auth: reading the upstream token failed: {status:?}");
            }),
            None => Ok(None),
        };
        match plan.decide(
            token.as_ref().map(Option::as_deref).map_err(|_| ()),
            self.plans.tokens.max_token_bytes,
        ) {
            Ok(edit) => match apply(&edit) {
                Ok(()) => {
                    count(&self.counters, edit.counter);
                    Action::Continue
                }
                Err(err) => {
                    error!("outgoing-auth: {err}");
                    count(&self.counters, Counter::HostError);
                    reply(&err)
                }
            },
            Err(err) => {
                self.log_rejection(&err, plan, backend.as_deref());
                count(&self.counters, rejection_counter(&err));
                reply(&err)
            }
        }
    }

    fn log_rejection(&self, err: &AuthError, plan: &Plan, backend: Option<&[u8]>) {
        let backend = backend.map_or_else(
            || "<none>".to_owned(),
            |b| format!("{:?}", String::from_utf8_lossy(b)),
        );
        match err {
            AuthError::UpstreamTokenNotFound { problem, .. } => {
                let tokens = &self.plans.tokens;
                let path = metadata::container_path(tokens);
                let present = host::get_property(&metadata::serialize_path(&path))
                    .ok()
                    .flatten()
                    .and_then(|data| {
                        metadata::decode_pairs(&data)
                            .ok()
                            .map(|pairs| metadata::providers_in(tokens, &pairs))
                    });
                let plan_name = match plan {
                    Plan::InjectUpstream { .. } => "upstream_inject",
                    _ => "strategy",
                };
                let present = present.map_or_else(
                    || "nothing readable".to_owned(),
                    |names| format!("providers {names:?}"),
                );
                warn!(
                    "outgoing-auth: backend {backend} ({plan_name}): {err} ({problem}); \
                     metadata {} holds {present}",
                    path.get(2..).map(|p| p.join("/")).unwrap_or_default()
                );
            }
            _ => warn!("outgoing-auth: backend {backend}: {err}"),
        }
    }
}

/// The first backend name that exists: route metadata, cluster metadata, cluster name.
fn backend_name() -> Option<Vec<u8>> {
    BACKEND_NAME_SOURCES.iter().find_map(|path| {
        host::get_property(path)
            .ok()
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

fn apply(edit: &Edit<'_>) -> Result<(), AuthError> {
    if edit.remove_authorization {
        host::remove_request_header("authorization").map_err(|_| AuthError::HostCall {
            operation: "remove the client's Authorization header",
        })?;
    }
    if let Some((name, value)) = &edit.set {
        host::set_request_header(name, value).map_err(|_| AuthError::HostCall {
            operation: "set the credential header",
        })?;
    }
    Ok(())
}

fn rejection_counter(err: &AuthError) -> Counter {
    match err {
        AuthError::UpstreamTokenNotFound { .. } => Counter::UpstreamTokenMissing,
        AuthError::NotImplemented { .. } => Counter::NotImplemented,
        AuthError::HostCall { .. } => Counter::HostError,
    }
}

/// Sends the error's local reply and stops the request.
fn reply(err: &AuthError) -> Action {
    let r = err.reply();
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(status) = host::send_local_reply(r.status, &headers, &r.body) {
        error!(
            "outgoing-auth: sending the {} reply failed: {status:?}",
            r.status
        );
    }
    Action::Pause
}
