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
use protobuf::{Message, MessageField};

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

    /// The event's protobuf full name, the `Any` type URL containerd's typeurl registers it
    /// under. Written out rather than asked of `MessageFull::descriptor()`: the first call to
    /// that builds the reflection tables of the whole generated file, which then stay resident
    /// in every shim (about 0.3 MB with the code they page in).
    fn type_url(&self) -> &'static str {
        match self {
            Event::Create(_) => "containerd.events.TaskCreate",
            Event::Start(_) => "containerd.events.TaskStart",
            Event::Exit(_) => "containerd.events.TaskExit",
            Event::Delete(_) => "containerd.events.TaskDelete",
            Event::Oom(_) => "containerd.events.TaskOOM",
            Event::ExecAdded(_) => "containerd.events.TaskExecAdded",
            Event::ExecStarted(_) => "containerd.events.TaskExecStarted",
            Event::Paused(_) => "containerd.events.TaskPaused",
            Event::Resumed(_) => "containerd.events.TaskResumed",
            Event::Checkpointed(_) => "containerd.events.TaskCheckpointed",
        }
    }

    /// The event as an `Any`.
    fn to_any(&self) -> protobuf::Result<Any> {
        let value = match self {
            Event::Create(e) => e.write_to_bytes(),
            Event::Start(e) => e.write_to_bytes(),
            Event::Exit(e) => e.write_to_bytes(),
            Event::Delete(e) => e.write_to_bytes(),
            Event::Oom(e) => e.write_to_bytes(),
            Event::ExecAdded(e) => e.write_to_bytes(),
            Event::ExecStarted(e) => e.write_to_bytes(),
            Event::Paused(e) => e.write_to_bytes(),
            Event::Resumed(e) => e.write_to_bytes(),
            Event::Checkpointed(e) => e.write_to_bytes(),
        }?;
        Ok(Any {
            type_url: self.type_url().to_string(),
            value,
            ..Default::default()
        })
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

#[cfg(test)]
mod tests {
    use protobuf::MessageFull;

    use super::*;

    #[test]
    fn type_urls_are_the_protobuf_full_names() {
        fn check<M: MessageFull + Default>(wrap: fn(M) -> Event) {
            let e = wrap(M::default());
            assert_eq!(e.type_url(), M::descriptor().full_name());
            assert_eq!(e.to_any().unwrap().type_url, M::descriptor().full_name());
        }
        check(Event::Create);
        check(Event::Start);
        check(Event::Exit);
        check(Event::Delete);
        check(Event::Oom);
        check(Event::ExecAdded);
        check(Event::ExecStarted);
        check(Event::Paused);
        check(Event::Resumed);
        check(Event::Checkpointed);
    }
}
