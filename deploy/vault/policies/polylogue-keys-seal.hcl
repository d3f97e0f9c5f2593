# polylogue-keys-seal: edge-api. Seals a user's provider key when it is added: asks transit for a
# fresh data key (plaintext + wrapped). Nothing else: it can never unwrap a stored key.
#
# Paths assume the defaults kms.vault.mount = "transit" and
# kms.vault.key_name = "polylogue-provider-keys"; change them together with those settings.
# Without `read` on transit/keys/<key>, edge-api logs at start that it may not read the transit
# key and assumes it exists (expected with this policy).
path "transit/datakey/plaintext/polylogue-provider-keys" {
  capabilities = ["update"]
}
