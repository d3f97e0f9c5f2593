# polylogue-keys-open: inference-router and summarizer. Open users' provider keys to call the
# providers: unwrap a stored data key. They cannot create, rewrap or rotate anything.
#
# Paths assume the defaults kms.vault.mount = "transit" and
# kms.vault.key_name = "polylogue-provider-keys"; change them together with those settings.
# Without `read` on transit/keys/<key>, these services log at start that they may not read the
# transit key and assume it exists (expected with this policy).
path "transit/decrypt/polylogue-provider-keys" {
  capabilities = ["update"]
}
