//! The shim's command line, in Go's `flag` syntax as containerd writes it: `-name value`,
//! `-name=value` or `--name value`, boolean flags alone, then the action.

use anyhow::{anyhow, bail, Result};

/// What containerd passes to every shim invocation.
#[derive(Debug, Default, Clone)]
pub struct Args {
    /// containerd namespace of the task.
    pub namespace: String,
    /// containerd's grpc address (the shim's socket name is derived from it).
    pub address: String,
    /// containerd binary to publish events with (unused: events go over ttrpc).
    pub publish_binary: String,
    /// Task id.
    pub id: String,
    /// Bundle path (`delete` only; the current directory otherwise).
    pub bundle: Option<String>,
    /// Socket the shim should serve (containerd 2.x passes it to the serving shim).
    pub socket: Option<String>,
    /// Verbose logging.
    pub debug: bool,
    /// Print the version and exit.
    pub version: bool,
    /// `start`, `delete` or none (serve).
    pub action: Option<String>,
}

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
        let mut a = Args::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix('-') else {
                if a.action.is_some() {
                    bail!("unexpected argument {arg:?} after the action");
                }
                a.action = Some(arg);
                continue;
            };
            let flag = flag.strip_prefix('-').unwrap_or(flag);
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let mut value = |name: &str| -> Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .ok_or_else(|| anyhow!("flag -{name} needs a value")),
                }
            };
            match name {
                "namespace" => a.namespace = value(name)?,
                "address" => a.address = value(name)?,
                "publish-binary" => a.publish_binary = value(name)?,
                "id" => a.id = value(name)?,
                "bundle" => a.bundle = Some(value(name)?),
                "socket" => a.socket = Some(value(name)?),
                "debug" => a.debug = !matches!(inline.as_deref(), Some("false")),
                "v" | "version" => a.version = true,
                other => bail!("unknown flag -{other}"),
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn containerd_start_line() {
        let a = parse(
            "-namespace default -address /run/containerd/containerd.sock \
             -publish-binary /usr/bin/containerd -id c1 -debug start",
        )
        .unwrap();
        assert_eq!(a.namespace, "default");
        assert_eq!(a.address, "/run/containerd/containerd.sock");
        assert_eq!(a.id, "c1");
        assert!(a.debug);
        assert_eq!(a.action.as_deref(), Some("start"));
    }

    #[test]
    fn inline_values_and_double_dash() {
        let a = parse("--namespace=k8s.io -id=x -bundle /b delete").unwrap();
        assert_eq!(a.namespace, "k8s.io");
        assert_eq!(a.id, "x");
        assert_eq!(a.bundle.as_deref(), Some("/b"));
        assert_eq!(a.action.as_deref(), Some("delete"));
        assert!(!a.debug);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(parse("-id").unwrap_err().to_string().contains("-id"));
        assert!(parse("-bogus 1").unwrap_err().to_string().contains("bogus"));
        assert!(parse("start delete").is_err());
    }
}
