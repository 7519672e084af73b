//! Task events to containerd: envelopes forwarded over ttrpc to
//! `containerd.services.events.ttrpc.v1.Events/Forward` at `$TTRPC_ADDRESS`, in the order
//! they were published, from one thread so that no request waits on containerd.
//!
//! The connection is made on first use and made again after an error (containerd restarted):
//! an event is retried for a while and dropped, with a log line, if containerd stays away.

use std::sync::mpsc;
use std::time::Duration;

use containerd_shim_protos::events::task::*;
use containerd_shim_protos::shim::events::{Envelope, ForwardRequest};
use containerd_shim_protos::EventsClient;
use protobuf::well_known_types::any::Any;
use protobuf::MessageField;

/// A task event with its containerd topic.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    Oom(TaskOOM),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Checkpointed(TaskCheckpointed),
}

impl Event {
    fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::Exit(_) => "/tasks/exit",
            Event::Delete(_) => "/tasks/delete",
            Event::Oom(_) => "/tasks/oom",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
            Event::Checkpointed(_) => "/tasks/checkpointed",
        }
    }

    /// The event as an `Any` named by its protobuf full name, as containerd's typeurl
    /// registers its events.
    fn to_any(&self) -> protobuf::Result<Any> {
        fn any<M: protobuf::MessageFull>(m: &M) -> protobuf::Result<Any> {
            Ok(Any {
                type_url: M::descriptor().full_name().to_string(),
                value: m.write_to_bytes()?,
                ..Default::default()
            })
        }
        match self {
            Event::Create(e) => any(e),
            Event::Start(e) => any(e),
            Event::Exit(e) => any(e),
            Event::Delete(e) => any(e),
            Event::Oom(e) => any(e),
            Event::ExecAdded(e) => any(e),
            Event::ExecStarted(e) => any(e),
            Event::Paused(e) => any(e),
            Event::Resumed(e) => any(e),
            Event::Checkpointed(e) => any(e),
        }
    }
}

/// Sends events to containerd in the background.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<mpsc::Sender<Event>>,
}

impl Publisher {
    /// A publisher for `namespace` at containerd's ttrpc address (`$TTRPC_ADDRESS`); one
    /// that drops everything when there is none (the shim run by hand).
    pub fn new(ttrpc_address: Option<String>, namespace: String) -> Publisher {
        let Some(addr) = ttrpc_address.filter(|a| !a.is_empty()) else {
            tracing::warn!("no TTRPC_ADDRESS: task events are not published");
            return Publisher { tx: None };
        };
        let addr = if addr.contains("://") {
            addr
        } else {
            format!("unix://{addr}")
        };
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || forward_loop(&addr, &namespace, &rx));
        if let Err(e) = spawned {
            tracing::error!("starting the event thread: {e}");
            return Publisher { tx: None };
        }
        Publisher { tx: Some(tx) }
    }

    /// Queues `event`.
    pub fn publish(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }
}

fn forward_loop(addr: &str, namespace: &str, rx: &mpsc::Receiver<Event>) {
    let mut client: Option<EventsClient> = None;
    for event in rx {
        let topic = event.topic();
        let any = match event.to_any() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("encoding event {topic}: {e}");
                continue;
            }
        };
        let req = ForwardRequest {
            envelope: MessageField::some(Envelope {
                timestamp: MessageField::some(crate::service::now()),
                namespace: namespace.to_string(),
                topic: topic.to_string(),
                event: MessageField::some(any),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut delay = Duration::from_millis(10);
        let mut sent = false;
        for _ in 0..12 {
            if client.is_none() {
                match ttrpc::Client::connect(addr) {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => tracing::debug!("connecting to {addr}: {e}"),
                }
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_duration(Duration::from_secs(5));
                match c.forward(ctx, &req) {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!("forwarding {topic} to {addr}: {e}");
                        client = None;
                    }
                }
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        if sent {
            tracing::debug!("published {topic}");
        } else {
            tracing::warn!("dropped event {topic}: containerd at {addr} did not take it");
        }
    }
}
