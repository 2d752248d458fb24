//! The parts of the manual that clap's tree does not hold: exit status, environment,
//! files, examples, and the host file format. One source for `--help` (attached to the
//! clap commands as their long after-help) and for the man pages (rendered as sections
//! by `syscont-gen`), so the two cannot drift apart.

/// One man page section: a title and (term, text) entries.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: &'static str,
    pub entries: Vec<(String, String)>,
}

/// Exit codes, as `crate::error` defines them.
pub const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "The command failed; the message on standard error says why.",
    ),
    (
        "2",
        "The command line or an input was invalid: a usage error, a bad value, name or reference.",
    ),
    ("3", "The image or container named does not exist."),
    (
        "125",
        "syscont run with a command, or of an image: syscont itself failed, before or around \
         the container.",
    ),
    (
        "141",
        "Standard output was closed before everything was written (syscont ... | head).",
    ),
    (
        "other",
        "syscont run with a command, or of an image: the container's own exit status (128 + N \
         when signal N ended it, or ended syscont).",
    ),
];

/// Environment variables syscont reads.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("SYSCONT_OSTREE_REPO", "The OSTree repository, as --repo."),
    (
        "SYSCONT_CHECKOUT_PATH",
        "The deployments directory, as --checkout-path.",
    ),
    (
        "SYSCONT_RUNTIME",
        "The OCI runtime used when none is given (default /usr/bin/runc).",
    ),
    (
        "SYSCONT_SKOPEO",
        "The skopeo binary (default skopeo from PATH).",
    ),
    (
        "SYSCONT_PULL_TIMEOUT",
        "Seconds a registry may send nothing, as --timeout (default 60).",
    ),
    ("REGISTRY_AUTH_FILE", "Registry credentials, as --authfile."),
    (
        "CONTAINERS_REGISTRIES_CONF",
        "A registries.conf to use instead of /etc/containers/registries.conf and its .d directory.",
    ),
    (
        "TMPDIR",
        "Where skopeo's private temporary directories go (default /var/tmp).",
    ),
    (
        "RUST_LOG",
        "Log filter (tracing syntax, e.g. debug), instead of the level -v and -vv set.",
    ),
    (
        "NO_COLOR",
        "When set, log lines have no colour (they never do when not on a terminal).",
    ),
    (
        "XDG_DATA_HOME, XDG_CONFIG_HOME, XDG_RUNTIME_DIR",
        "For a user other than root: where their store, deployments, units and locks go.",
    ),
];

/// Files syscont reads and writes (as root; a user's are under the XDG directories).
pub const FILES: &[(&str, &str)] = &[
    (
        "/var/lib/containers/atomic/NAME, NAME.0, NAME.1",
        "A container's deployments; NAME points at the active one.",
    ),
    (
        "/var/lib/containers/atomic/.storage/ostree",
        "The image store (or /ostree/repo when it exists on the same filesystem).",
    ),
    ("/etc/systemd/system/NAME.service", "A container's unit."),
    (
        "/etc/tmpfiles.d/NAME.conf",
        "A container's tmpfiles snippet.",
    ),
    (
        "/etc/syscont/host.toml",
        "The host file that syscont-apply.service applies at boot.",
    ),
    (
        "/etc/containers/registries.conf, /etc/containers/policy.json",
        "Short names and registries; signature policy.",
    ),
    (
        "/run/syscont/locks",
        "Locks, present only while a command holds them.",
    ),
];

/// Examples for a command, by its path (`install`, `containers update`, …): (what it
/// does, the command line).
fn examples(path: &str) -> &'static [(&'static str, &'static str)] {
    match path {
        "" => &[
            ("Install etcd from a registry and start it", "syscont install --system --start etcd"),
            ("See what runs", "syscont containers list"),
        ],
        "install" => &[
            (
                "Install etcd with two values and start it",
                "syscont install --system --set ETCD_PORT=2379 --set ETCD_NAME=node1 --start registry.example/etcd:3.4",
            ),
            ("Show what an install would write", "syscont install --dry-run flannel"),
        ],
        "run" => &[
            ("Start an installed container's service", "syscont run etcd"),
            ("Run a command in it (exec when it runs)", "syscont run etcd etcdctl endpoint health"),
            ("Run an image once; the exit status is the command's", "syscont run busybox sh -c 'exit 7'"),
        ],
        "containers list" => &[
            ("Every container, names only", "syscont containers list --all -q"),
            ("Name and state, tab-separated", "syscont containers list --format '{{.name}}\\t{{.state}}'"),
            ("As JSON", "syscont containers list --all --format json"),
        ],
        "containers update" => &[
            ("Change a value, watch the service 30 s", "syscont containers update --set ETCD_PORT=2380 --probation 30 etcd"),
            ("Switch to another image", "syscont containers update --rebase etcd:3.5 --pull etcd"),
            ("See the plan first", "syscont containers update --dry-run --set ETCD_PORT=2380 etcd"),
            (
                "One host of the etcd group at a time, gated on the cluster's health",
                "syscont containers update --pull --etcd http://10.0.0.1:2379,http://10.0.0.2:2379 --group etcd --health-exec 'etcdctl endpoint health --cluster' etcd",
            ),
        ],
        "fleet status" => &[
            ("Who holds the slots, and which digests failed", "syscont fleet status"),
            ("One group, as JSON", "syscont fleet status etcd --format json"),
        ],
        "fleet release" => &[(
            "Free the slot of a host that died while it held it",
            "syscont fleet release fb9e59d4be304c6aa0293b76410cd46d --group etcd --reason 'host replaced'",
        )],
        "fleet unblock" => &[(
            "Let hosts roll a digest again",
            "syscont fleet unblock sha256:4a5b...",
        )],
        "fleet serve" => &[(
            "A FleetLock server over etcd for hosts without etcd credentials",
            "syscont fleet serve --listen 0.0.0.0:8089 --etcd https://10.0.0.1:2379 --etcd-ca ca.pem --etcd-cert c.pem --etcd-key k.pem --group etcd=1",
        )],
        "containers rollback" => &[("Go back to the other deployment", "syscont containers rollback etcd")],
        "pull" => &[
            ("From a registry", "syscont pull docker://registry.example/etcd:3.4"),
            ("From an archive on an air-gapped host", "syscont pull oci-archive:/srv/images/etcd.tar"),
            ("From a plain-HTTP registry", "syscont pull --tls-verify=false 127.0.0.1:5000/etcd"),
        ],
        "images list" => &[("Names of the stored images", "syscont images list --format '{{.name}}'")],
        "images verify" => &[("Check an image, and repair it", "syscont images verify --repair etcd")],
        "images export" => &[("For hosts without a registry", "syscont images export etcd oci-archive:/srv/etcd.tar")],
        "apply" => &[
            ("The plan, with diffs", "syscont apply --dry-run /etc/syscont/host.toml"),
            ("Apply it", "syscont apply /etc/syscont/host.toml"),
        ],
        "build" => &[(
            "Build, store and push an image",
            "syscont build --rootfs rootfs/ --exports exports/ --label atomic.type=system --tag etcd:3.4 --push docker://registry.example/etcd:3.4",
        )],
        _ => &[],
    }
}

/// The sections of a command's page. The top page has them all; a subcommand's has its
/// examples and the exit status.
pub fn sections(path: &str) -> Vec<Section> {
    let pairs = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let mut out = vec![Section {
        title: "EXIT STATUS",
        entries: pairs(EXIT_STATUS),
    }];
    if path.is_empty() {
        out.push(Section {
            title: "ENVIRONMENT",
            entries: pairs(ENVIRONMENT),
        });
        out.push(Section {
            title: "FILES",
            entries: pairs(FILES),
        });
    }
    let ex = examples(path);
    if !ex.is_empty() {
        out.push(Section {
            title: "EXAMPLES",
            entries: pairs(ex),
        });
    }
    out
}

/// The same sections as text, for `--help`.
pub fn help_text(path: &str) -> String {
    let mut t = String::new();
    for s in sections(path) {
        t.push_str(&format!("{}:\n", title_case(s.title)));
        for (term, text) in &s.entries {
            if s.title == "EXAMPLES" {
                t.push_str(&format!("  # {term}\n  {text}\n"));
            } else {
                t.push_str(&format!("  {term}\n      {text}\n"));
            }
        }
        t.push('\n');
    }
    t.trim_end().to_string()
}

fn title_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 0 {
            out.push(c);
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The host file format page, syscont-host.toml(5), as roff.
pub const HOST_TOML_PAGE: &str = r#".TH SYSCONT-HOST.TOML 5 "" "syscont" "syscont manual"
.SH NAME
syscont-host.toml \- the host file of syscont apply
.SH SYNOPSIS
/etc/syscont/host.toml
.SH DESCRIPTION
\fBsyscont apply\fR FILE makes a host's system containers what a TOML file says: it installs
what is missing, updates what changed (health-gated, rolled back on failure) and uninstalls
what is marked absent, in the order the rendered units' dependencies give. At boot,
\fBsyscont-apply.service\fR applies /etc/syscont/host.toml when it exists.
Unknown keys, duplicate names, invalid names or values, and a present container without an
image are errors that name the file and the line; nothing changes then.
.SH [defaults]
All keys are optional.
.TP
\fBtls-verify\fR = BOOL
Verify registry certificates; false also allows plain HTTP.
.TP
\fBauthfile\fR = PATH
Registry credentials, containers-auth.json(5).
.TP
\fBprobation\fR = SECONDS
How long an updated service must stay active (default 10).
.TP
\fBruntime\fR = PATH
The OCI runtime for new installs (default /usr/bin/runc).
.SH [fleet]
Optional. With it, an update that restarts a container takes a slot of the container's
group first, so that at most N hosts of the group restart it at once, and frees it once
the container passed its health gate. See \fBsyscont\-fleet\-status\fR(1).
.TP
\fBetcd\fR = [URL, ...] | \fBfleetlock\fR = URL
The coordinator: etcd client URLs (airlock's semaphore keys), or a FleetLock server
(airlock, or \fBsyscont fleet serve\fR). One of the two is required.
.TP
\fBetcd\-ca\fR, \fBetcd\-cert\fR, \fBetcd\-key\fR = PATH
TLS for https etcd URLs: the CA, and a client certificate with its key.
.TP
\fBid\fR = STRING
This host's holder id (default: derived from /etc/machine\-id, as Zincati does).
.TP
\fBgroup\fR = STRING, \fBslots\fR = N
The group of containers that name none (default "default"), and the slot count of a group
this host creates (default 1).
.TP
\fBsplay\fR = SECONDS
At most this much random delay before pulling (default 30).
.TP
\fBwait\fR = SECONDS, \fBunreachable\fR = SECONDS
How long to wait for a free slot (default 3600), and how long the coordinator may stay
unreachable (default 300) before the update fails; nothing restarts meanwhile.
.SH [[container]]
One table per container.
.TP
\fBname\fR = STRING
Required. The container and unit name (NAME.service), with the rules of \-\-name.
.TP
\fBimage\fR = STRING
Required when present: any image form that syscont pull takes.
.TP
\fBfallbacks\fR = [STRING, ...]
More image sources, tried in order when the image cannot be pulled and is not stored yet.
.TP
\fBset\fR = { KEY = VALUE, ... }
Template values, as \-\-set; strings, numbers or booleans. They are all the values: a key
removed here is no longer set.
.TP
\fBset-json\fR = { KEY = VALUE, ... }
Structured values for Tera templates, as \-\-set\-json.
.TP
\fBruntime\fR = PATH
The OCI runtime of this container.
.TP
\fBstart\fR = BOOL
Start the service (default true).
.TP
\fBstate\fR = "present" | "absent"
Whether the container is to be installed (default present).
.TP
\fB[container.fleet]\fR group = STRING, slots = N
The container's fleet group and its slot count (default: the [fleet] table's).
.TP
\fB[container.health]\fR exec = COMMAND, exec\-on = "container" | "host", soak = SECONDS, timeout = SECONDS
The gate an update must pass: the start job (a Type=notify unit is ready when it says so),
then COMMAND succeeding within timeout (default 120), then the unit staying active for soak
(default: probation) with COMMAND passing again at its end. A failed gate rolls back.
.SH EXAMPLE
.nf
[defaults]
probation = 10

[[container]]
name = "etcd"
image = "registry.example/coreos/etcd:3.4"
fallbacks = ["oci\-archive:/usr/share/syscont/images/etcd.tar"]
set = { ETCD_PORT = 2379 }

[[container]]
name = "flannel"
image = "registry.example/coreos/flannel:0.24"

[[container]]
name = "old\-agent"
state = "absent"
.fi
.SH SEE ALSO
\fBsyscont\-apply\fR(1), \fBsyscont\-install\fR(1)
"#;
