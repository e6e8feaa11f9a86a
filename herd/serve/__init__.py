"""`herd serve`: the OpenAI translation (`openai`, pure functions), the request bodies (`protocol`), the
engine thread (`runner`) and the thin HTTP app (`app`)."""
