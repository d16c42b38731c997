"""Hidden reasoning-token audits (CoIn, hardened): the embedding engine, the provider's
commitment builder, the semantic checks and the auditor's flow. Needs ``tallystick[coin]``.

The protocol itself (leaf encoding, signed heads, challenges, openings, evidence) is pure and
lives in :mod:`tallystick.verifier.coin`, so an audit can be re-checked offline without torch.
"""
