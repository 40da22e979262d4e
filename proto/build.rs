//! Compiles the CSI spec's `csi.proto`, kubelet's plugin-registration `api.proto` and
//! our `backend.proto`.
//!
//! The two upstream files are not vendored: they come from their own releases, the Go
//! modules `github.com/container-storage-interface/spec@v1.13.0` and
//! `k8s.io/kubelet@v0.37.2`, fetched with `go mod download` (the Go module proxy
//! verifies them against the checksum database). Set `CSI_PROTO` / `PLUGINREGISTRATION_PROTO`
//! to a file's path to build without Go.

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const CSI_MODULE: &str = "github.com/container-storage-interface/spec@v1.13.0";
/// Holds the kubelet plugin-registration API that replaces node-driver-registrar.
const KUBELET_MODULE: &str = "k8s.io/kubelet@v0.37.2";
const REGISTRATION_PROTO_IN_MODULE: &str = "pkg/apis/pluginregistration/v1/api.proto";

/// The CSI spec marks every field that holds credentials with this field option.
const CSI_SECRET_OPTION: &str = "csi.v1.csi_secret";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=CSI_PROTO");
    println!("cargo:rerun-if-env-changed=PLUGINREGISTRATION_PROTO");
    println!("cargo:rerun-if-changed=backend.proto");
    let csi_proto = match std::env::var_os("CSI_PROTO") {
        Some(path) => PathBuf::from(path),
        None => module_file(CSI_MODULE, "csi.proto", "CSI_PROTO")?,
    };
    let csi_dir = csi_proto
        .parent()
        .ok_or("CSI_PROTO has no parent directory")?;
    let registration_upstream = match std::env::var_os("PLUGINREGISTRATION_PROTO") {
        Some(path) => PathBuf::from(path),
        None => module_file(
            KUBELET_MODULE,
            REGISTRATION_PROTO_IN_MODULE,
            "PLUGINREGISTRATION_PROTO",
        )?,
    };
    let registration_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("pluginregistration");
    std::fs::create_dir_all(&registration_dir)?;
    let registration_proto = registration_dir.join("pluginregistration.proto");
    let upstream_text = std::fs::read_to_string(&registration_upstream)
        .map_err(|e| format!("reading {}: {e}", registration_upstream.display()))?;
    std::fs::write(&registration_proto, without_gogoproto(&upstream_text)?)?;
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);

    let mut compiler =
        protox::Compiler::new([csi_dir, registration_dir.as_path(), manifest_dir.as_path()])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files([
            csi_proto.as_path(),
            registration_proto.as_path(),
            &manifest_dir.join("backend.proto"),
        ])?;
    // The pool keeps the custom field options (`csi_secret`) that prost-types drops.
    let pool = compiler.descriptor_pool();
    let with_secrets = messages_with_secrets(&pool)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("csi_redact.rs"),
        redact_source(&pool, &with_secrets)?,
    )?;
    std::fs::write(
        out_dir.join("descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .skip_debug(with_secrets.iter().map(|m| format!(".{}", m.full_name())))
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Whether a field holds credentials: the spec's `csi_secret` option, or (should an
/// upstream message forget the option) the name `secrets`.
fn is_secret(pool: &DescriptorPool, field: &FieldDescriptor) -> bool {
    let marked = pool
        .get_extension_by_name(CSI_SECRET_OPTION)
        .is_some_and(|option| {
            let options = field.options();
            options.has_extension(&option)
                && matches!(*options.get_extension(&option), Value::Bool(true))
        });
    marked || field.name() == "secrets"
}

/// Every message with a secret field, from the compiled descriptors. Their `Debug` is
/// generated here instead of derived, so a secret never reaches a log line. A message
/// that holds such a message needs nothing: its derived `Debug` calls the redacting one.
fn messages_with_secrets(pool: &DescriptorPool) -> Result<Vec<MessageDescriptor>, String> {
    let mut found = Vec::new();
    for message in pool.all_messages() {
        if !message.fields().any(|f| is_secret(pool, &f)) {
            continue;
        }
        // Only the CSI package gets redacting impls; a secret elsewhere must not slip
        // through with a derived Debug.
        if message.package_name() != "csi.v1" {
            return Err(format!(
                "{} has a secret field but is outside csi.v1: teach build.rs to redact it",
                message.full_name()
            ));
        }
        found.push(message);
    }
    if found.is_empty() {
        return Err("no CSI message with a secret field found: the descriptors changed".into());
    }
    found.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    Ok(found)
}

/// The Rust path of a `csi.v1` message below `crate::csi::v1` (prost nests a message's
/// own messages in a snake_case module named after it).
fn rust_type(message: &MessageDescriptor) -> String {
    let mut path = vec![message.name().to_owned()];
    let mut parent = message.parent_message();
    while let Some(p) = parent {
        path.insert(0, snake_case(p.name()));
        parent = p.parent_message();
    }
    path.join("::")
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A proto field name as prost spells the Rust field (keywords become raw identifiers).
fn rust_field(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern",
        "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
        "pub", "ref", "return", "static", "struct", "trait", "true", "type", "unsafe", "use",
        "where", "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv",
        "typeof", "unsized", "virtual", "yield", "try", "gen",
    ];
    if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_owned()
    }
}

/// `src/redact.rs` includes this: the redacting `Debug` impls, the list of messages with
/// secrets, the decoder that lets the RPC log print any CSI request, and for the tests a
/// way to fill every secret field of every such message.
fn redact_source(
    pool: &DescriptorPool,
    with_secrets: &[MessageDescriptor],
) -> Result<String, Box<dyn std::error::Error>> {
    let mut out =
        String::from("// @generated by proto/build.rs from the compiled descriptors.\n\n");
    for message in with_secrets {
        let ty = rust_type(message);
        writeln!(out, "impl ::core::fmt::Debug for {ty} {{")?;
        writeln!(
            out,
            "    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{"
        )?;
        writeln!(out, "        f.debug_struct({:?})", message.name())?;
        let mut oneofs_done = Vec::new();
        for field in message.fields() {
            match field.containing_oneof() {
                Some(oneof) if !oneof.is_synthetic() => {
                    if !oneofs_done.contains(&oneof.name().to_owned()) {
                        oneofs_done.push(oneof.name().to_owned());
                        writeln!(
                            out,
                            "            .field({:?}, &self.{})",
                            oneof.name(),
                            rust_field(&snake_case(oneof.name()))
                        )?;
                    }
                }
                _ if is_secret(pool, &field) => {
                    writeln!(
                        out,
                        "            .field({:?}, &\"<redacted>\")",
                        field.name()
                    )?;
                }
                _ => writeln!(
                    out,
                    "            .field({:?}, &self.{})",
                    field.name(),
                    rust_field(field.name())
                )?,
            }
        }
        writeln!(out, "            .finish()\n    }}\n}}\n")?;
    }

    writeln!(
        out,
        "/// CSI messages with a secret field (`csi_secret`), derived from the descriptors.\npub const MESSAGES_WITH_SECRETS: &[&str] = &["
    )?;
    for message in with_secrets {
        writeln!(out, "    {:?},", message.name())?;
    }
    writeln!(out, "];\n")?;

    writeln!(
        out,
        "/// The request of a CSI method (`/csi.v1.<Service>/<Method>`) decoded from its protobuf\n\
         /// bytes and printed with `Debug` (secrets redacted); `None` for any other path.\n\
         pub fn debug_request(path: &str, message: &[u8]) -> Option<Result<String, ::prost::DecodeError>> {{\n    \
         match path {{"
    )?;
    for service in pool.services().filter(|s| s.package_name() == "csi.v1") {
        for method in service.methods() {
            let input = method.input();
            if input.package_name() != "csi.v1" {
                continue;
            }
            writeln!(
                out,
                "        \"/{}/{}\" => Some(<{} as ::prost::Message>::decode(message).map(|m| format!(\"{{m:?}}\"))),",
                service.full_name(),
                method.name(),
                rust_type(&input)
            )?;
        }
    }
    writeln!(out, "        _ => None,\n    }}\n}}\n")?;

    writeln!(
        out,
        "/// Test support: `message` (by name) with `secret` in every secret field (map\n\
         /// keys and values alike), printed with `Debug`; `None` for other names.\n\
         #[cfg(test)]\n\
         pub(crate) fn debug_with_secret(message: &str, secret: &str) -> Option<String> {{\n    \
         match message {{"
    )?;
    for message in with_secrets {
        writeln!(out, "        {:?} => {{", message.name())?;
        writeln!(
            out,
            "            let mut m = {}::default();",
            rust_type(message)
        )?;
        for field in message.fields().filter(|f| is_secret(pool, f)) {
            let name = rust_field(field.name());
            let fill = if field.is_map() {
                "m.{f}.insert(secret.to_owned(), secret.to_owned());"
            } else if field.is_list() {
                "m.{f}.push(secret.to_owned().into());"
            } else if matches!(field.kind(), Kind::String | Kind::Bytes) {
                "m.{f} = secret.to_owned().into();"
            } else {
                return Err(format!(
                    "secret field {} has a type build.rs cannot fill in its test",
                    field.full_name()
                )
                .into());
            };
            writeln!(out, "            {}", fill.replace("{f}", &name))?;
        }
        writeln!(out, "            Some(format!(\"{{m:?}}\"))\n        }}")?;
    }
    writeln!(out, "        _ => None,\n    }}\n}}")?;
    Ok(out)
}

/// Older releases of kubelet's `api.proto` import gogo protobuf and set file-level
/// `option (gogoproto.…)` lines that only steer Go code generation. Rather than vendor
/// gogo.proto for protox, those lines are dropped from the text before compiling
/// (v0.37.2 has none, so today this changes nothing). A gogo option anywhere else
/// (on a field, inline) would change what we compile, so it stops the build instead.
fn without_gogoproto(text: &str) -> Result<String, String> {
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let gogo_import = trimmed.starts_with("import") && trimmed.contains("gogoproto/gogo.proto");
        let gogo_option = trimmed.starts_with("option (gogoproto.");
        if gogo_import || gogo_option {
            continue;
        }
        if trimmed.contains("gogoproto") {
            return Err(format!(
                "{REGISTRATION_PROTO_IN_MODULE} uses a gogoproto option this build cannot drop: {line:?}"
            ));
        }
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept)
}

/// Asks the Go toolchain for the directory of a pinned module and returns `file` in it.
fn module_file(
    module: &str,
    file: &str,
    override_env: &str,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    // Run outside any Go module so that no go.mod of a parent directory interferes.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let output = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(&out_dir)
        .env("GOFLAGS", "-mod=mod")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "running `go mod download {module}` to fetch {file}: {e} \
                 (install Go, or set {override_env} to that file of {module})"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`go mod download -json {module}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let dir = info["Dir"]
        .as_str()
        .ok_or("`go mod download -json` printed no Dir field")?;
    let path = Path::new(dir).join(file);
    if !path.is_file() {
        return Err(format!("{} does not exist after go mod download", path.display()).into());
    }
    Ok(path)
}
