# polylogue-keys-admin: the operator's `polylogue keys rotate` (admin CLI). Rotates the transit
# key and reads its new version; then `polylogue keys rewrap` (through auth) moves the stored
# keys. Give it to a short-lived token made for the occasion, not to a service.
#
# `update` on transit/keys/<key> also lets the CLI create the key if it is missing (a write to
# an existing key changes nothing); deleting it or changing its config is not allowed.
#
# Paths assume the defaults kms.vault.mount = "transit" and
# kms.vault.key_name = "polylogue-provider-keys"; change them together with those settings.
path "transit/keys/polylogue-provider-keys" {
  capabilities = ["read", "update"]
}

path "transit/keys/polylogue-provider-keys/rotate" {
  capabilities = ["update"]
}
