"""BOLT 3 published test vectors (Appendix D: per-commitment secret generation; Appendix E: key
derivation), transcribed from the spec text. Appendix C (commitment transactions) is not here:
its long hex could not be transcribed with certainty, so the commitment builder is checked
byte for byte against real hsmd captures instead (tests/sim/test_bolt3.py)."""

# (name, seed, 48-bit index, expected output)
GENERATE_FROM_SEED = [
    ("generate_from_seed 0 final node", "00" * 32, 281474976710655,
     "02a40c85b6f28da08dfdbe0926c53fab2de6d28c10301f8f7c4073d5e42e3148"),
    ("generate_from_seed FF final node", "ff" * 32, 281474976710655,
     "7cc854b54e3e0dcdb010d7a3fee464a9687be6e8db3be6854c475621e007a5dc"),
    ("generate_from_seed FF alternate bits 1", "ff" * 32, 0xAAAAAAAAAAA,
     "56f4008fb007ca9acf0e15b054d5c9fd12ee06cea347914ddbaed70d1c13a528"),
    ("generate_from_seed FF alternate bits 2", "ff" * 32, 0x555555555555,
     "9015daaeb06dba4ccc05b91b2f73bd54405f2be9f217fbacd3c5ac2e62327d31"),
    ("generate_from_seed 01 last nontrivial node", "01" * 32, 1,
     "915c75942a26bb3a433a8ce2cb0427c29ec6c1775cfc78328b57f6ba7bfeaa9c"),
]

KEY_DERIVATION = {
    "base_secret": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "per_commitment_secret": "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100",
    "base_point": "036d6caac248af96f6afa7f904f550253a0f3ef3f5aa2fe6838a95b216691468e2",
    "per_commitment_point": "025f7117a78150fe2ef97db7cfc83bd57b2e2c0d0dd25eaf467a4a1c2a45ce1486",
    "localpubkey": "0235f2dbfaa89b57ec7b055afe29849ef7ddfeb1cefdb9ebdc43f5494984db29e5",
    "localprivkey": "cbced912d3b21bf196a766651e436aff192362621ce317704ea2f75d87e7be0f",
    "revocationpubkey": "02916e326636d19c33f13e8c0c3a03dd157f332f3e99c317c141dd865eb01f8ff0",
    "revocationprivkey": "d09ffff62ddb2297ab000cc85bcb4283fdeb6aa052affbc9dddcf33b61078110",
}

# Appendix C's channel: payment basepoints and the obscuring factor 0x2bb038521914.
OBSCURING = {
    "local_payment_basepoint": "034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa",
    "remote_payment_basepoint": "032c0b7cf95324a07d05398b240174dc0c2be444d96b159aa6c7f7b1e668680991",
    "factor": 0x2BB038521914,
}

# Appendix D, storage tests: "insert_secret correct sequence" (index 281474976710655 - i for i in 0..7).
STORAGE_CORRECT_SEQUENCE = [
    "7cc854b54e3e0dcdb010d7a3fee464a9687be6e8db3be6854c475621e007a5dc",
    "c7518c8ae4660ed02894df8976fa1a3659c1a8b4b5bec0c4b872abeba4cb8964",
    "2273e227a5b7449b6e70f1fb4652864038b1cbf9cd7c043a7d6456b7fc275ad8",
    "27cddaa5624534cb6cb9d7da077cf2b22ab21e9b506fd4998a51d54502e99116",
    "c65716add7aa98ba7acb236352d665cab17345fe45b55fb879ff80e6bd0c41dd",
    "969660042a28f32d9be17344e09374b379962d03db1574df5a8a5a47e19ce3f2",
    "a5a64476122ca0925fb344bdc1854c1c0a59fc614298e50a33e331980a220f32",
    "05cde6323d949933f7f7b78776bcc1ea6d9b31447732e3802e1f7ac44b650e17",
]

# Appendix C's funding keys and funding witness script.
FUNDING = {
    "local_funding_privkey": "30ff4956bbdd3222d44cc5e8a1261dab1e07957bdac5ae88fe3261ef321f3749",
    "local_funding_pubkey": "023da092f6980e58d2c037173180e9a465476026ee50f96695963e8efe436f54eb",
    "remote_funding_pubkey": "030e9f7b623d2ccc7c9bd44d66d5ce21ce504c0acf6385a132cec6d3c39fa711c1",
    "funding_witness_script": "5221023da092f6980e58d2c037173180e9a465476026ee50f96695963e8efe436f54eb21030e9f7b623d2ccc7c9bd44d66d5ce21ce504c0acf6385a132cec6d3c39fa711c152ae",
}
