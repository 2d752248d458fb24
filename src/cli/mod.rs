//! The command line: the clap tree and one dispatch `match`. No logic lives here.
//!
//! Doc comments on these items are the user documentation (`--help` and man pages).

pub(crate) mod dispatch;
pub(crate) mod fleet;
pub(crate) mod format;
pub mod manual;
pub(crate) mod plan;
pub(crate) mod print;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

use crate::cli::format::Format;
use crate::image::skopeo::{FetchOptions, RegistryOptions};

/// syscont installs system containers: OCI images stored in OSTree, run by runc under systemd.
#[derive(Debug, Parser)]
#[command(
    name = "syscont",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Opt {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options that apply to every command.
#[derive(Debug, Args)]
struct GlobalOpts {
    /// Keep images in this OSTree repository. By default it is /ostree/repo when that
    /// exists on the same filesystem as the checkout path, else CHECKOUT/.storage/ostree.
    #[arg(long, global = true, env = "SYSCONT_OSTREE_REPO", value_name = "PATH")]
    repo: Option<PathBuf>,
    /// Keep container deployments (NAME, NAME.0, NAME.1) in this directory. By default it
    /// is /var/lib/containers/atomic for root and $XDG_DATA_HOME/containers/atomic for
    /// other users (their own rootless containers).
    #[arg(
        long,
        global = true,
        env = "SYSCONT_CHECKOUT_PATH",
        value_name = "PATH"
    )]
    checkout_path: Option<PathBuf>,
    /// Print less: no progress, only results and errors (for lists: only IDs or names).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print more about what happens; repeat for debugging output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install a system container: check out the image, render its unit, config and
    /// tmpfiles, copy its host files, and register the unit with systemd.
    ///
    /// Installing a name that is already installed says so and succeeds.
    Install(InstallArgs),
    /// Uninstall a system container: stop and disable its unit, remove its files, host files
    /// that were not modified, and both deployments.
    Uninstall {
        /// Name the container.
        name: String,
    },
    /// Manage installed system containers.
    #[command(subcommand)]
    Containers(ContainersCommand),
    /// Start a container's service; with a command, run it in the container (exec when it
    /// runs, a one-off run in its deployment when stopped); with an image, run it once.
    Run {
        /// Set a template value KEY=VALUE for a run from an image (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Name an installed container or an image.
        target: String,
        /// Run this command (with its arguments) instead of starting the service.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Stop a container's service.
    Stop {
        /// Name the container.
        name: String,
    },
    /// Make the host's system containers what a host file says: install what is missing,
    /// update what changed (health-gated, rolled back on failure), uninstall what is marked
    /// absent, in the order the units' dependencies give.
    ///
    /// The host file is TOML; see docs/host-file.md. A second run with no changes does
    /// nothing and says so.
    Apply {
        /// Print the plan (per container: the action, and the unit, config.json and
        /// tmpfiles changes and host files) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Read this host file, e.g. /etc/syscont/host.toml.
        file: PathBuf,
    },
    /// Check what installs need on this host (runtime, skopeo and its image proxy,
    /// libostree, the repository and checkout path, cgroups, systemd over D-Bus, free
    /// space), each with a hint when something is wrong.
    Doctor {
        #[command(flatten)]
        format: FormatOpt,
    },
    /// Mount an image or an installed container's rootfs read-only on a directory.
    ///
    /// An image is checked out by hardlinks first; the mount is a read-only bind mount, so
    /// nothing written can reach the store. Undo it with `syscont umount DIR`.
    Mount {
        /// Name an installed container, or an image by name or ID prefix.
        target: String,
        /// Mount on this existing directory.
        dir: PathBuf,
    },
    /// Unmount what `syscont mount` mounted on a directory, and remove its checkout.
    Umount {
        /// Unmount this directory, as given to `syscont mount`.
        dir: PathBuf,
    },
    /// Pull an image into the local OSTree store.
    ///
    /// Layers already in the store are not fetched again. Bare names are resolved through
    /// registries.conf (unqualified-search-registries and aliases).
    Pull(PullOpts),
    /// Inspect and manage the images in the local store.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Build an OCI image from a directory, reproducibly, without a container engine.
    Build(BuildOpts),
    /// Coordinate updates across a fleet of hosts: at most N hosts of a group restart a
    /// container at once, through etcd (airlock's semaphore) or a FleetLock server.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Internal commands that syscont runs itself.
    #[command(subcommand, hide = true)]
    Internal(InternalCommand),
}

/// `syscont internal …` (not for people).
#[derive(Debug, Subcommand)]
enum InternalCommand {
    /// Wait for a syscont process to exit, then finish or revert its switch of a
    /// container (the guard that systemd runs during updates and rollbacks).
    Recover {
        /// Wait for this process first.
        #[arg(long, value_name = "PID")]
        after_pid: u32,
        /// Name the container.
        name: String,
    },
}

/// `syscont install`.
#[derive(Debug, Args)]
struct InstallArgs {
    /// Install a system container (the default for root, and only for root).
    #[arg(long, conflicts_with = "user")]
    system: bool,
    /// Install a rootless container of the calling user (the default for everyone but root).
    #[arg(long)]
    user: bool,
    /// Name the container (by default it is the image name, with the tag unless it is latest).
    #[arg(short, long)]
    name: Option<String>,
    /// Set a template value KEY=VALUE (repeatable); values may contain spaces and '='.
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Set a structured template value KEY=JSON for Tera templates (repeatable).
    #[arg(long, value_name = "KEY=JSON")]
    set_json: Vec<String>,
    /// Use an existing root filesystem instead of checking out the image.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Run the container with this OCI runtime (by default /usr/bin/runc).
    #[arg(long, value_name = "PATH")]
    runtime: Option<PathBuf>,
    /// Start the service and wait for the result.
    #[arg(long)]
    start: bool,
    /// Print what the install would write (unit, config.json, tmpfiles, host files) and
    /// change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    fetch: FetchOpts,
    /// Install this image.
    image: String,
}

#[derive(Debug, Subcommand)]
enum ContainersCommand {
    /// List installed containers (running ones, and those that need a look, unless --all).
    ///
    /// With -q, only the names, whole, one per line. When systemd cannot be reached, the
    /// containers are listed with the state `unknown` and the command exits with 1.
    List {
        /// Also list containers that are not running.
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        table: TableOpts,
        /// Show only containers matching KEY=VALUE: a field of the JSON output (name or
        /// container, image, command, state, runtime, backend, id, created), as a
        /// case-insensitive substring.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Update a container to its image's current version or new values, into the other
    /// deployment; a running service is restarted and rolled back if it fails.
    Update(Box<UpdateArgs>),
    /// Switch a container back to its other deployment.
    Rollback {
        /// Name the container.
        name: String,
    },
    /// Compare a container's rootfs with its image in the store, and its host files with
    /// the checksums recorded at install; report every drifted, missing or extra file.
    Verify {
        /// Name the container.
        name: String,
    },
}

/// `syscont containers update`.
#[derive(Debug, Args)]
struct UpdateArgs {
    /// Update every installed container (with automatic rollback) and print a summary.
    #[arg(long, conflicts_with_all = ["name", "set", "rebase"])]
    all: bool,
    /// Set a template value KEY=VALUE (repeatable); it persists for later updates.
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Set a structured template value KEY=JSON (repeatable).
    #[arg(long, value_name = "KEY=JSON")]
    set_json: Vec<String>,
    /// Switch to another image.
    #[arg(long, value_name = "IMAGE")]
    rebase: Option<String>,
    /// Pull the image again before updating.
    #[arg(long)]
    pull: bool,
    /// Keep the new version even if it fails to start.
    #[arg(long)]
    no_rollback: bool,
    /// Rebuild the deployment from the store even when the image and values are
    /// unchanged (after `syscont images verify --repair`, to replace files that were
    /// changed on the host).
    #[arg(long, conflicts_with = "all")]
    force: bool,
    /// Print what the update would do (the image, the values, and the unit,
    /// config.json and tmpfiles diffs) and change nothing.
    #[arg(long, conflicts_with = "all")]
    dry_run: bool,
    /// Require the restarted service to stay active this many seconds before the
    /// update counts (default: the host file's soak or probation, else 10).
    #[arg(long, value_name = "SECONDS")]
    probation: Option<u64>,
    #[command(flatten)]
    health: HealthOpts,
    #[command(flatten)]
    fleet: FleetOpts,
    #[command(flatten)]
    fetch: FetchOpts,
    /// Name the container.
    #[arg(required_unless_present = "all")]
    name: Option<String>,
}

/// The health gate of an update (else the host file's `[container.health]`).
#[derive(Debug, Args, Clone)]
struct HealthOpts {
    /// Require this shell command to succeed after the restart, e.g. 'etcdctl endpoint
    /// health --cluster'; it is tried about once a second until --health-timeout.
    #[arg(long, value_name = "COMMAND")]
    health_exec: Option<String>,
    /// Run the --health-exec command in the container (the default) or on the host.
    #[arg(long, value_name = "WHERE", value_parser = ["container", "host"])]
    health_on: Option<String>,
    /// Give the --health-exec command this many seconds to pass (default 120).
    #[arg(long, value_name = "SECONDS")]
    health_timeout: Option<u64>,
}

/// Where the fleet coordinator is: the host file's `[fleet]` table, or these options.
#[derive(Debug, Args, Clone)]
struct CoordinatorOpts {
    /// Read the [fleet] table (and the containers' groups and health checks) from this
    /// host file; by default /etc/syscont/host.toml, when it exists.
    #[arg(long, value_name = "FILE")]
    host_file: Option<PathBuf>,
    /// Coordinate through these etcd client URLs (comma-separated), as the host file's
    /// [fleet] etcd.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        conflicts_with = "fleetlock"
    )]
    etcd: Vec<String>,
    /// CA certificates (PEM) for https etcd URLs.
    #[arg(long, value_name = "FILE", requires = "etcd")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd; give --etcd-key with it.
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
    /// Coordinate through this FleetLock server (airlock, or `syscont fleet serve`).
    #[arg(long, value_name = "URL")]
    fleetlock: Option<String>,
    /// This host's holder id (by default derived from /etc/machine-id, as Zincati does).
    #[arg(long, value_name = "ID")]
    fleet_id: Option<String>,
}

/// Fleet options of an update.
#[derive(Debug, Args, Clone)]
struct FleetOpts {
    #[command(flatten)]
    coordinator: CoordinatorOpts,
    /// Take a slot of this fleet group before the restart (else the host file's group).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// The group's slot count, when this host creates its semaphore (default 1).
    #[arg(long, value_name = "N", requires = "group")]
    slots: Option<u64>,
}

/// `syscont fleet …`.
#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Show the groups: slots, holders (with host, container, digest and since when) and
    /// failed digests. Reads groups that airlock created, too.
    Status {
        /// Show only this group.
        group: Option<String>,
        #[command(flatten)]
        format: FormatOpt,
        #[command(flatten)]
        coordinator: CoordinatorOpts,
    },
    /// Free the slot of a holder that will not come back (a dead host), and log why.
    Release {
        /// The holder id, as `syscont fleet status` shows it.
        id: String,
        /// The holder's group.
        #[arg(long)]
        group: String,
        /// Why, for the log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        coordinator: CoordinatorOpts,
    },
    /// Let hosts roll a digest again that failed its health gate somewhere.
    Unblock {
        /// The image digest (sha256:...), as `syscont fleet status` shows it.
        digest: String,
        /// Only in this group (by default in every group).
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        coordinator: CoordinatorOpts,
    },
    /// Serve FleetLock v1 over the etcd semaphore, for hosts that hold no etcd
    /// credentials; runs until SIGTERM or SIGINT.
    Serve {
        /// Listen on this address.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8089")]
        listen: String,
        /// The semaphore's etcd client URLs (comma-separated).
        #[arg(
            long,
            value_name = "URL[,URL...]",
            value_delimiter = ',',
            required = true
        )]
        etcd: Vec<String>,
        /// CA certificates (PEM) for https etcd URLs.
        #[arg(long, value_name = "FILE")]
        etcd_ca: Option<PathBuf>,
        /// Client certificate (PEM) for etcd.
        #[arg(long, value_name = "FILE", requires = "etcd_key")]
        etcd_cert: Option<PathBuf>,
        /// Client key (PEM) for etcd.
        #[arg(long, value_name = "FILE", requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// The slot count of a group, GROUP=N (repeatable), used when its semaphore is
        /// created.
        #[arg(long = "group", value_name = "GROUP=N")]
        groups: Vec<String>,
        /// The slot count of groups not named with --group; 0 refuses them, as airlock
        /// does.
        #[arg(long, value_name = "N", default_value_t = 1)]
        slots: u64,
    },
}

/// `--format`.
#[derive(Debug, Args, Clone)]
pub(crate) struct FormatOpt {
    /// Print as `table` (the default), `json` (snake_case fields, RFC 3339 times), or a
    /// template of the JSON fields such as '{{.name}}\t{{.state}}'.
    #[arg(long, value_name = "FORMAT")]
    format: Option<Format>,
}

impl FormatOpt {
    fn get(self) -> Format {
        Format::choose(self.format, false)
    }
}

/// `--format`, and `--json` as scripts written for earlier releases use it.
#[derive(Debug, Args, Clone)]
pub(crate) struct JsonOrFormat {
    /// Print JSON (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    json: bool,
    #[command(flatten)]
    format: FormatOpt,
}

impl JsonOrFormat {
    fn get(self) -> Format {
        Format::choose(self.format.format, self.json)
    }
}

/// How a list prints: the format, and whether its table cuts long columns.
#[derive(Debug, Args, Clone)]
pub(crate) struct TableOpts {
    #[command(flatten)]
    output: JsonOrFormat,
    /// Do not truncate columns (names, IDs, images, commands).
    #[arg(long)]
    no_trunc: bool,
}

/// How to reach registries (the same in every command that talks to one).
#[derive(Debug, Args, Clone)]
struct RegistryOpts {
    /// Verify TLS certificates of the registry (false: also allow plain HTTP).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    tls_verify: Option<bool>,
    /// Read registry credentials from this file, in containers-auth.json(5) format.
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
}

impl From<RegistryOpts> for RegistryOptions {
    fn from(r: RegistryOpts) -> Self {
        RegistryOptions {
            tls_verify: r.tls_verify,
            authfile: r.authfile,
        }
    }
}

/// Options for fetching images.
#[derive(Debug, Args, Clone)]
struct FetchOpts {
    #[command(flatten)]
    registry: RegistryOpts,
    /// Choose this architecture from a multi-architecture image (by default the host's):
    /// amd64, arm64, arm, ppc64le, s390x, riscv64, …
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    arch: Option<String>,
    /// Give up on a registry that sends nothing for this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        env = "SYSCONT_PULL_TIMEOUT"
    )]
    timeout: u64,
    /// Have libostree hash every object again as it is written and fail on any difference
    /// from syscont's checksum (slower; for diagnosis and tests).
    #[arg(long, env = "SYSCONT_VERIFY_OBJECTS")]
    verify_objects: bool,
}

fn parse_arch(s: &str) -> std::result::Result<String, String> {
    crate::image::skopeo::check_arch(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

impl From<FetchOpts> for FetchOptions {
    fn from(f: FetchOpts) -> Self {
        FetchOptions {
            registry: f.registry.into(),
            arch: f.arch,
            timeout: std::time::Duration::from_secs(f.timeout.max(1)),
            verify_objects: f.verify_objects,
        }
    }
}

#[derive(Debug, Args)]
struct PullOpts {
    #[command(flatten)]
    fetch: FetchOpts,
    /// Pull this image: docker://REG/REPO[:TAG|@DIGEST], oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG], docker-archive:FILE, dir:DIR, or a bare name such as flannel
    /// or quay.io/x/etcd:3.4.
    image: String,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// List the images in the store.
    List(ImagesListOpts),
    /// Show an image's labels and its template variables.
    Info {
        #[command(flatten)]
        format: FormatOpt,
        /// Name the image, by name, short name or ID prefix.
        image: String,
    },
    /// Show an image's manifest, configuration and layers.
    Inspect {
        #[command(flatten)]
        format: JsonOrFormat,
        /// Name the image, by name, short name or ID prefix.
        image: String,
    },
    /// Delete images from the store (their files go with the next prune).
    Delete {
        /// Delete even when an installed container uses the image.
        #[arg(short, long)]
        force: bool,
        /// Delete these images, by name or ID prefix. An ID prefix deletes every tag with
        /// that ID.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove layers and objects that no image uses, and leftovers of interrupted work.
    Prune,
    /// Give an image another name.
    Tag {
        /// Tag this existing image.
        src: String,
        /// Give it this new name.
        dst: String,
    },
    /// Recompute the checksum of every object of every layer and report corruption.
    ///
    /// Deployments and `images checkout` trees share their files with the store (they are
    /// hardlinks), so a file changed in one of them changes the image for everyone;
    /// this finds it.
    Verify {
        /// Repair what is damaged: remove corrupt objects and fetch the layers that held
        /// them again from where the image was pulled from.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        fetch: FetchOpts,
        /// Name the image, by name or ID prefix.
        image: String,
    },
    /// Write an image to an archive, a directory or a registry (any skopeo destination:
    /// oci-archive:FILE[:TAG], docker-archive:FILE, oci:DIR[:TAG], dir:DIR, docker://…),
    /// e.g. to ship it to hosts without a registry.
    ///
    /// The rootfs becomes one layer and /exports another, with the image's configuration;
    /// the result is reproducible but has its own digest.
    Export {
        #[command(flatten)]
        registry: RegistryOpts,
        /// Name the image, by name, short name or ID prefix.
        image: String,
        /// Write it here, e.g. oci-archive:/srv/images/etcd.tar.
        dest: String,
    },
    /// Check out the union of an image's layers into a new directory.
    ///
    /// By default the files are hardlinks of the store's objects: the checkout is quick and
    /// takes no space, but its files are the store's. Changing one changes the image for
    /// every deployment that uses it (`images verify` finds that, `--repair` undoes it).
    /// Use --copy for a tree of your own to change.
    Checkout {
        /// Copy the files instead of hardlinking them: an independent tree.
        #[arg(long)]
        copy: bool,
        /// Name the image, by name or ID prefix.
        image: String,
        /// Create this directory (it must not exist).
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ImagesListOpts {
    /// Also list layer and config blobs.
    #[arg(short, long)]
    all: bool,
    #[command(flatten)]
    table: TableOpts,
    /// Show only images matching KEY=VALUE: a field of the JSON output (repo, tag, id,
    /// name, created, pulled, size, type), as a case-insensitive substring.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
}

#[derive(Debug, Args)]
struct BuildOpts {
    /// Make this directory the image's root filesystem.
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Start from this base image: its layers come first.
    #[arg(long, value_name = "IMAGE")]
    from: Option<String>,
    /// Make this directory /exports: config.json.template, service.template,
    /// tmpfiles.template, manifest.json and hostfs/.
    #[arg(long, value_name = "DIR")]
    exports: Option<PathBuf>,
    /// Set the entrypoint, as a JSON array or a single command.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Set the command, as a JSON array or a single command.
    #[arg(long)]
    cmd: Option<String>,
    /// Set an environment variable KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Set a label KEY=VALUE (repeatable), e.g. atomic.type=system.
    #[arg(long, value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Set the working directory of the process.
    #[arg(long)]
    workdir: Option<String>,
    /// Expose a port, PORT[/PROTO] (repeatable).
    #[arg(long)]
    expose: Vec<String>,
    /// Declare a volume path (repeatable).
    #[arg(long)]
    volume: Vec<String>,
    /// Name the image NAME[:TAG].
    #[arg(long)]
    tag: String,
    /// Also write the image to an OCI layout: oci:DIR[:TAG].
    #[arg(long, value_name = "oci:DIR[:TAG]")]
    output: Option<String>,
    /// Also push the image with skopeo: docker://REG/REPO:TAG.
    #[arg(long, value_name = "docker://…")]
    push: Option<String>,
    #[command(flatten)]
    fetch: FetchOpts,
}

/// The program: parses the arguments, runs the command, prints an error as one line of
/// context chain, and returns the exit code (see [`crate::error::exit_code`]).
pub fn main() -> std::process::ExitCode {
    let res = run(std::env::args_os());
    match res {
        // Output to a closed pipe ends as a Unix tool killed by SIGPIPE does.
        Ok(()) if crate::util::output::stdout_closed() => std::process::ExitCode::from(141),
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A container's own non-zero status is not syscont's error: no message.
            if e.downcast_ref::<crate::error::ContainerExit>().is_none() {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::from(crate::error::exit_code(&e))
        }
    }
}

/// Sets up logging on standard error: warnings by default; `-v` adds what syscont does
/// step by step (info), `-vv` the commands it runs and its systemd calls (debug).
/// `$RUST_LOG` (tracing's filter syntax) overrides `-v`. Colour only on a terminal, and
/// never with `$NO_COLOR` set, so the journal of a unit running syscont gets plain text.
fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The clap tree with the manual's sections (exit status, environment, files, examples)
/// attached to every command's `--help`; `syscont-gen` writes the man pages from it.
pub fn command() -> clap::Command {
    fn attach(cmd: clap::Command, path: String) -> clap::Command {
        let mut cmd = cmd.after_long_help(crate::cli::manual::help_text(&path));
        let subs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for name in subs {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path} {name}")
            };
            cmd = cmd.mut_subcommand(&name, |s| attach(s, p));
        }
        cmd
    }
    attach(<Opt as clap::CommandFactory>::command(), String::new())
}

/// Parses the arguments and runs the command.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let matches = command().get_matches_from(args);
    let opt =
        <Opt as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(opt.global.verbose);
    crate::util::output::set_quiet(opt.global.quiet);
    dispatch::dispatch(opt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Opt::command().debug_assert();
    }

    #[test]
    fn parses_pull() {
        let o =
            Opt::try_parse_from(["syscont", "pull", "--tls-verify=false", "docker://x/y"]).unwrap();
        match o.command {
            Command::Pull(p) => {
                assert_eq!(p.fetch.registry.tls_verify, Some(false));
                assert_eq!(p.image, "docker://x/y");
            }
            _ => panic!("wrong command"),
        }
    }
}
