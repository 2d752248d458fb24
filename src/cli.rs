//! The command line: the clap tree and one dispatch `match`. No logic lives here.
//!
//! Doc comments on these items are the user documentation (`--help` and man pages).

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

use crate::output::outln;
use crate::store::StoreConfig;

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
    Doctor,
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
    /// List installed containers (running ones unless --all).
    List {
        /// Also list containers that are not running.
        #[arg(short, long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Do not truncate columns.
        #[arg(long)]
        no_trunc: bool,
        /// Show only containers matching KEY=VALUE (container, image, command, state,
        /// runtime, backend).
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Update a container to its image's current version or new values, into the other
    /// deployment; a running service is restarted and rolled back if it fails.
    Update {
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
        /// Require the restarted service to stay active this many seconds before the
        /// update counts.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        probation: u64,
        #[command(flatten)]
        fetch: FetchOpts,
        /// Name the container.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
    },
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

/// Options for fetching images.
#[derive(Debug, Args, Clone)]
pub(crate) struct FetchOpts {
    /// Verify TLS certificates of the registry (false: also allow plain HTTP).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: Option<bool>,
    /// Read registry credentials from this file, in containers-auth.json(5) format.
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    pub authfile: Option<PathBuf>,
    /// Choose this architecture from a multi-architecture image (by default the host's).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Give up on a registry that sends nothing for this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        env = "SYSCONT_PULL_TIMEOUT"
    )]
    pub timeout: u64,
    /// Have libostree hash every object again as it is written and fail on any difference
    /// from syscont's checksum (slower; for diagnosis and tests).
    #[arg(long, env = "SYSCONT_VERIFY_OBJECTS")]
    pub verify_objects: bool,
}

impl Default for FetchOpts {
    fn default() -> Self {
        FetchOpts {
            tls_verify: None,
            authfile: std::env::var_os("REGISTRY_AUTH_FILE").map(Into::into),
            arch: None,
            timeout: 60,
            verify_objects: std::env::var("SYSCONT_VERIFY_OBJECTS")
                .is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "no" | "off")),
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
        /// Name the image, by name or ID prefix.
        image: String,
    },
    /// Show an image's manifest, configuration and layers.
    Inspect {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Name the image, by name or ID prefix.
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
        /// Name the image, by name or ID prefix.
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
pub(crate) struct ImagesListOpts {
    /// Also list layer and config blobs.
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not truncate IDs and names.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show only images matching KEY=VALUE (repo, tag, id, created, size, type).
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
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
    /// Write the image to an OCI layout: oci:DIR[:TAG].
    #[arg(long, value_name = "oci:DIR[:TAG]", required_unless_present = "push")]
    output: Option<String>,
    /// Push the image with skopeo: docker://REG/REPO:TAG.
    #[arg(long, value_name = "docker://…")]
    push: Option<String>,
    /// Verify TLS when pushing (false: also allow plain HTTP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// Read registry credentials for the push from this file.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
}

/// The program: parses the arguments, runs the command, prints an error as one line of
/// context chain, and returns the exit code (see [`crate::error::exit_code`]).
pub fn main() -> std::process::ExitCode {
    init_logging();
    let res = run(std::env::args_os());
    match res {
        // Output to a closed pipe ends as a Unix tool killed by SIGPIPE does.
        Ok(()) if crate::output::stdout_closed() => std::process::ExitCode::from(141),
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(crate::error::exit_code(&e))
        }
    }
}

/// Sets up logging: warnings by default, `-v`/`RUST_LOG` for more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

fn split_command(s: Option<String>) -> Option<Vec<String>> {
    s.map(|s| match serde_json::from_str::<Vec<String>>(&s) {
        Ok(v) => v,
        Err(_) => vec![s],
    })
}

/// Parses the arguments and runs the command.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let opt = Opt::parse_from(args);
    let g = &opt.global;
    if g.verbose > 0 && std::env::var_os("RUST_LOG").is_none() {
        crate::output::set_verbose(g.verbose);
    }
    crate::output::set_quiet(g.quiet);
    let store = StoreConfig {
        repo: g.repo.clone(),
        checkout_path: g
            .checkout_path
            .clone()
            .unwrap_or_else(crate::scope::default_checkout_path),
    };
    match opt.command {
        Command::Install(i) => {
            let user = crate::scope::is_user();
            if i.user && !user {
                anyhow::bail!(
                    "--user does not work as root: root installs system containers (--system)"
                );
            }
            if i.system && user {
                anyhow::bail!(
                    "--system needs root; as a user, syscont installs your own rootless containers (--user, the default)"
                );
            }
            let o = crate::container::InstallOpts {
                image: i.image,
                name: i.name,
                set: i.set,
                set_json: i.set_json,
                rootfs: i.rootfs,
                runtime: i.runtime,
                start: i.start,
                fetch: Some(i.fetch),
            };
            if i.dry_run {
                crate::apply::install_dry_run(&store, &o)
            } else {
                crate::container::install(&store, &o)
            }
        }
        Command::Apply { dry_run, file } => {
            crate::apply::apply(&store, &crate::apply::ApplyOpts { file, dry_run })
        }
        Command::Uninstall { name } => crate::container::uninstall(&store, &name),
        Command::Containers(c) => match c {
            ContainersCommand::List {
                all,
                json,
                no_trunc,
                filters,
            } => crate::container::list(&store, all, json, no_trunc, &filters),
            ContainersCommand::Update {
                all,
                set,
                set_json,
                rebase,
                pull,
                no_rollback,
                force,
                probation,
                fetch,
                name,
            } => {
                let o = crate::container::UpdateOpts {
                    set,
                    set_json,
                    rebase,
                    pull,
                    no_rollback,
                    probation: std::time::Duration::from_secs(probation),
                    fetch: Some(fetch),
                    replace_values: false,
                    runtime: None,
                    force,
                };
                match (all, name) {
                    (true, _) => crate::container::update_all(&store, &o),
                    (false, Some(n)) => crate::container::update(&store, &n, &o).map(|_| ()),
                    (false, None) => anyhow::bail!("give a container name or --all"),
                }
            }
            ContainersCommand::Rollback { name } => crate::container::rollback(&store, &name),
            ContainersCommand::Verify { name } => crate::verify::verify(&store, &name),
        },
        Command::Run {
            set,
            target,
            command,
        } => crate::container::run(&store, &target, &command, &set),
        Command::Stop { name } => crate::container::stop(&store, &name),
        Command::Doctor => crate::doctor::doctor(&store),
        Command::Mount { target, dir } => crate::mount::mount(&store, &target, &dir),
        Command::Umount { dir } => crate::mount::umount(&dir),
        Command::Pull(p) => crate::pull::pull_cmd(&store, &p.fetch, &p.image),
        Command::Images(c) => match c {
            ImagesCommand::List(o) => crate::images::list(&store, &o),
            ImagesCommand::Info { image } => crate::images::info(&store, &image),
            ImagesCommand::Inspect { json, image } => crate::images::inspect(&store, &image, json),
            ImagesCommand::Delete { force, images } => {
                crate::images::delete(&store, &images, force)
            }
            ImagesCommand::Prune => crate::images::prune(&store),
            ImagesCommand::Tag { src, dst } => crate::images::tag(&store, &src, &dst),
            ImagesCommand::Verify {
                repair,
                fetch,
                image,
            } => crate::images::verify(&store, &image, repair, &fetch),
            ImagesCommand::Checkout { copy, image, dir } => {
                crate::images::checkout(&store, &image, &dir, copy)
            }
            ImagesCommand::Export { image, dest } => crate::images::export(&store, &image, &dest),
        },
        Command::Internal(InternalCommand::Recover { after_pid, name }) => {
            crate::deploy::validate_name(&name)?;
            let deps = crate::deploy::Deployments::new(&store.checkout_path);
            crate::switch::guard(&deps, &name, after_pid)
        }
        Command::Build(b) => {
            let opts = crate::imagebuild::BuildOptions {
                rootfs: b.rootfs,
                from: b.from,
                exports: b.exports,
                entrypoint: split_command(b.entrypoint),
                cmd: split_command(b.cmd),
                env: b.env,
                labels: b.label,
                workdir: b.workdir,
                expose: b.expose,
                volumes: b.volume,
                tag: b.tag,
                output: b.output,
                push: b.push,
                tls_verify: b.tls_verify,
                authfile: b.authfile,
            };
            let r = crate::imagebuild::build(&opts)?;
            outln!("{}", r.manifest_digest);
            Ok(())
        }
    }
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
                assert_eq!(p.fetch.tls_verify, Some(false));
                assert_eq!(p.image, "docker://x/y");
            }
            _ => panic!("wrong command"),
        }
    }
}
