-- Public names never hold an email address (SPEC §4): every signed-in user can search them. Google
-- sign-in used to fall back to the email when a token had no `name`, and dev login took any name.
-- Such users are named by their id; a later Google sign-in with a real name renames them.
UPDATE users SET name = 'User ' || id
WHERE (email IS NOT NULL
       AND (lower(trim(name)) = lower(trim(email))
            OR (instr(email, '@') > 1
                AND lower(trim(name)) = lower(trim(substr(email, 1, instr(email, '@') - 1))))))
   -- An `@` with a non-space character on each side, as dev login and Google sign-in judge it now.
   OR name GLOB '*[^ ]@[^ ]*';
