//! `Debug` for CSI messages that carry secrets, and the decoder the RPC log uses.
//!
//! build.rs finds every message with a secret field (the spec's `csi_secret` option, or
//! a field named `secrets`) in the compiled descriptors, skips prost's derived `Debug`
//! for exactly those and generates one that prints every other field and shows each
//! secret as `<redacted>` (not even its keys). Nothing here is kept by hand, so a new
//! spec version with a new secret field is covered by the next build.

use crate::csi::v1::*;

include!(concat!(env!("OUT_DIR"), "/csi_redact.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::BTreeSet;

    const SECRET: &str = "hunter2-very-secret";

    #[test]
    fn no_message_with_secrets_prints_a_secret() {
        assert!(
            !MESSAGES_WITH_SECRETS.is_empty(),
            "the generated list is empty"
        );
        for name in MESSAGES_WITH_SECRETS {
            let printed = debug_with_secret(name, SECRET)
                .unwrap_or_else(|| panic!("{name} has no generated test filler"));
            assert!(printed.starts_with(name), "{printed}");
            assert!(printed.contains("<redacted>"), "{name}: {printed}");
            assert!(
                !printed.contains(SECRET),
                "{name} leaks its secret: {printed}"
            );
        }
    }

    /// Read back independently of build.rs: every csi.v1 message with a field named
    /// `secrets` in the compiled descriptor set must be in the generated list.
    #[test]
    fn list_covers_every_message_with_a_secrets_field() {
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));
        let set = prost_types::FileDescriptorSet::decode(&bytes[..]).expect("descriptor set");
        let mut named = BTreeSet::new();
        for file in set.file.iter().filter(|f| f.package() == "csi.v1") {
            for message in &file.message_type {
                if message.field.iter().any(|f| f.name() == "secrets") {
                    named.insert(message.name().to_owned());
                }
            }
        }
        let generated: BTreeSet<String> = MESSAGES_WITH_SECRETS
            .iter()
            .map(|m| (*m).to_owned())
            .collect();
        assert!(named.contains("CreateVolumeRequest"), "{named:?}");
        assert!(named.contains("NodePublishVolumeRequest"), "{named:?}");
        let missing: Vec<_> = named.difference(&generated).collect();
        assert!(missing.is_empty(), "not redacted: {missing:?}");
    }

    #[test]
    fn other_fields_still_print() {
        let request = CreateVolumeRequest {
            name: "pvc-1".into(),
            parameters: [("onDelete".to_string(), "retain".to_string())].into(),
            secrets: [("password".to_string(), SECRET.to_string())].into(),
            ..Default::default()
        };
        let printed = format!("{request:?}");
        assert!(printed.contains("pvc-1"), "{printed}");
        assert!(printed.contains("onDelete"), "{printed}");
        assert!(!printed.contains("password"), "{printed}");
        assert!(!printed.contains(SECRET), "{printed}");
    }

    #[test]
    fn requests_decode_by_method_path() {
        let request = NodePublishVolumeRequest {
            volume_id: "v1/c/pvc-1".into(),
            target_path: "/pods/x".into(),
            secrets: [("token".to_string(), SECRET.to_string())].into(),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        let printed = debug_request("/csi.v1.Node/NodePublishVolume", &bytes)
            .expect("a CSI method")
            .expect("decodes");
        assert!(printed.contains("v1/c/pvc-1"), "{printed}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(debug_request("/grpc.health.v1.Health/Check", &bytes).is_none());
        assert!(debug_request("/csi.v1.Identity/Probe", &[]).is_some());
    }
}
