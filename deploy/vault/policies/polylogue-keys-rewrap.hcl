# polylogue-keys-rewrap: auth. Runs the rewrap command (`polylogue keys rewrap`, sent to auth
# over NATS) after a rotation: reads the transit key's current version and moves every stored
# data key to it. The plaintext data keys never leave Vault on this path.
#
# Paths assume the defaults kms.vault.mount = "transit" and
# kms.vault.key_name = "polylogue-provider-keys"; change them together with those settings.
path "transit/rewrap/polylogue-provider-keys" {
  capabilities = ["update"]
}

path "transit/keys/polylogue-provider-keys" {
  capabilities = ["read"]
}
