"""Which part of the node's life each request belongs to: a partition of hsmd's requests.

Used where a bounded label or a coarse grouping is needed (metrics, fault families). The
partition is protocol knowledge (reference §2, §7), so it lives with the codec.
"""

from __future__ import annotations

from .codec import SPECS_BY_NAME

FAMILY_OF_REQUEST: dict[str, str] = {
    # start-up and identity
    "hsmd_init": "init",
    "hsmd_dev_preinit": "init",
    "hsmd_derive_secret": "init",
    "hsmd_dev_memleak": "init",
    # client fds and channel lifecycle
    "hsmd_client_hsmfd": "channel",
    "hsmd_new_channel": "channel",
    "hsmd_get_channel_basepoints": "channel",
    "hsmd_setup_channel": "channel",
    "hsmd_check_outpoint": "channel",
    "hsmd_lock_outpoint": "channel",
    "hsmd_forget_channel": "channel",
    # the commitment dance: where split-brain happens
    "hsmd_get_per_commitment_point": "commitment",
    "hsmd_sign_remote_commitment_tx": "commitment",
    "hsmd_sign_remote_htlc_tx": "commitment",
    "hsmd_validate_commitment_tx": "commitment",
    "hsmd_revoke_commitment_tx": "commitment",
    "hsmd_validate_revocation": "commitment",
    "hsmd_check_future_secret": "commitment",
    "hsmd_sign_commitment_tx": "commitment",
    # closing and splicing
    "hsmd_sign_mutual_close_tx": "close",
    "hsmd_sign_splice_tx": "close",
    # on-chain resolution
    "hsmd_sign_delayed_payment_to_us": "onchain",
    "hsmd_sign_remote_htlc_to_us": "onchain",
    "hsmd_sign_penalty_to_us": "onchain",
    "hsmd_sign_any_delayed_payment_to_us": "onchain",
    "hsmd_sign_any_remote_htlc_to_us": "onchain",
    "hsmd_sign_any_penalty_to_us": "onchain",
    "hsmd_sign_any_local_htlc_tx": "onchain",
    "hsmd_sign_anchorspend": "onchain",
    "hsmd_sign_htlc_tx_mingle": "onchain",
    # wallet
    "hsmd_sign_withdrawal": "wallet",
    "hsmd_get_output_scriptpubkey": "wallet",
    "hsmd_check_pubkey": "wallet",
    "hsmd_check_bip86_pubkey": "wallet",
    "hsmd_bip137_sign_message": "wallet",
    "hsmd_sign_message": "wallet",
    # peers and gossip
    "hsmd_ecdh_req": "ecdh",
    "hsmd_cannouncement_sig_req": "gossip",
    "hsmd_cupdate_sig_req": "gossip",
    "hsmd_sign_any_cannouncement_req": "gossip",
    "hsmd_node_announcement_sig_req": "gossip",
    # payments and offers
    "hsmd_sign_invoice": "payments",
    "hsmd_sign_bolt12": "payments",
    "hsmd_sign_bolt12_2": "payments",
    "hsmd_preapprove_invoice": "payments",
    "hsmd_preapprove_keysend": "payments",
    "hsmd_preapprove_invoice_check": "payments",
    "hsmd_preapprove_keysend_check": "payments",
    "hsmd_sign_option_will_fund_offer": "payments",
}

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(FAMILY_OF_REQUEST.values())) + ("unknown",)


def family_of(name: str | None) -> str:
    """The family of a request name; "unknown" for anything else (unknown types, replies)."""
    return FAMILY_OF_REQUEST.get(name, "unknown") if name else "unknown"


assert set(FAMILY_OF_REQUEST) <= set(SPECS_BY_NAME), set(FAMILY_OF_REQUEST) - set(SPECS_BY_NAME)
