-- Demo scenario for the messaging extension, run by demo/run.sh against a
-- scratch cluster whose messaging.app_name is 'wrapper'.
--
-- Three tenants (acme, globex, initech) of the "wrapper" application; its
-- events go to the crm and billing applications (topic exchange
-- inter-app-events, routing key <target_app>.<event_type>) or to everyone
-- (target_app NULL: fanout exchange inter-app-broadcast).
--
-- Expected deliveries (demo/run.sh checks these numbers):
--   crm     9 targeted + 3 broadcast = 12
--   billing 5 targeted + 3 broadcast =  8
-- The last transaction rolls back: none of its events may arrive.

\set ON_ERROR_STOP on

-- acme: a new organisation with its first administrator.
BEGIN;
SELECT messaging.publish_event('org.created',
    '{"org_id": "org-acme", "name": "Acme Corporation", "plan": "enterprise",
      "country": "US", "created_by": "usr-acme-0001"}',
    NULL, 'acme', NULL, 'onboarding-acme');
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-acme-0001", "email": "wile.e@acme.example",
      "display_name": "Wile E. Coyote", "locale": "en-US", "roles": ["admin"]}',
    'crm', 'acme', NULL, 'onboarding-acme');
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-acme-0001", "email": "wile.e@acme.example",
      "display_name": "Wile E. Coyote", "billing_contact": true}',
    'billing', 'acme', NULL, 'onboarding-acme');
SELECT messaging.publish_event('role.created',
    '{"role_id": "role-acme-ops", "name": "Operations",
      "permissions": ["orders.read", "orders.write", "inventory.read"]}',
    'crm', 'acme', NULL, 'onboarding-acme');
SELECT messaging.publish_event('credit.allocated',
    '{"account_id": "acct-acme", "amount": {"value": "5000.00", "currency": "USD"},
      "reason": "enterprise onboarding", "expires_at": "2027-12-31T23:59:59Z"}',
    'billing', 'acme', NULL, 'onboarding-acme');
COMMIT;

-- acme: the operations role gets an extra permission.
SELECT messaging.publish_event('role.permissions_updated',
    '{"role_id": "role-acme-ops", "added": ["reports.read"], "removed": [],
      "permissions": ["orders.read", "orders.write", "inventory.read", "reports.read"]}',
    'crm', 'acme');

-- globex: organisation, two users assigned to it, one later deactivated.
BEGIN;
SELECT messaging.publish_event('org.created',
    '{"org_id": "org-globex", "name": "Globex Corporation", "plan": "business",
      "country": "US", "created_by": "usr-globex-0007"}',
    NULL, 'globex', NULL, 'onboarding-globex');
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-globex-0007", "email": "hank.scorpio@globex.example",
      "display_name": "Hank Scorpio", "locale": "en-US", "roles": ["owner"]}',
    'crm', 'globex', NULL, 'onboarding-globex');
SELECT messaging.publish_event('org.assignment.created',
    '{"org_id": "org-globex", "user_id": "usr-globex-0007", "role": "owner"}',
    'crm', 'globex', NULL, 'onboarding-globex');
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-globex-0012", "email": "frank.grimes@globex.example",
      "display_name": "Frank Grimes", "locale": "en-US", "roles": ["member"]}',
    'crm', 'globex', NULL, 'onboarding-globex');
SELECT messaging.publish_event('org.assignment.created',
    '{"org_id": "org-globex", "user_id": "usr-globex-0012", "role": "member"}',
    'crm', 'globex', NULL, 'onboarding-globex');
COMMIT;

BEGIN;
SELECT messaging.publish_event('user.deactivated',
    '{"user_id": "usr-globex-0012", "reason": "left the company",
      "deactivated_at": "2026-03-02T17:45:00Z"}',
    'crm', 'globex', NULL, 'offboarding-globex-0012');
SELECT messaging.publish_event('user.deactivated',
    '{"user_id": "usr-globex-0012", "reason": "left the company",
      "deactivated_at": "2026-03-02T17:45:00Z", "stop_seat_billing": true}',
    'billing', 'globex', NULL, 'offboarding-globex-0012');
COMMIT;

-- initech: organisation, a user and a starter credit.
BEGIN;
SELECT messaging.publish_event('org.created',
    '{"org_id": "org-initech", "name": "Initech", "plan": "starter",
      "country": "US", "created_by": "usr-initech-0042"}',
    NULL, 'initech', NULL, 'onboarding-initech');
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-initech-0042", "email": "peter.gibbons@initech.example",
      "display_name": "Peter Gibbons", "locale": "en-US", "roles": ["admin"]}',
    'crm', 'initech', NULL, 'onboarding-initech');
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-initech-0042", "email": "peter.gibbons@initech.example",
      "display_name": "Peter Gibbons", "billing_contact": true}',
    'billing', 'initech', NULL, 'onboarding-initech');
SELECT messaging.publish_event('credit.allocated',
    '{"account_id": "acct-initech", "amount": {"value": "250.00", "currency": "USD"},
      "reason": "starter plan trial credit", "expires_at": "2026-06-30T23:59:59Z"}',
    'billing', 'initech', NULL, 'onboarding-initech');
COMMIT;

-- initech: an onboarding that fails half way and rolls back. Nothing of it
-- may reach the other applications (the payloads are marked "ghost" so
-- demo/run.sh can look for them).
BEGIN;
SELECT messaging.publish_event('user.created',
    '{"user_id": "usr-initech-ghost", "email": "ghost@initech.example",
      "display_name": "Milton Waddams (ghost)", "roles": ["member"]}',
    'crm', 'initech', NULL, 'ghost-onboarding');
SELECT messaging.publish_event('credit.allocated',
    '{"account_id": "acct-initech-ghost", "amount": {"value": "999.00", "currency": "USD"},
      "reason": "ghost credit"}',
    'billing', 'initech', NULL, 'ghost-onboarding');
SELECT messaging.publish_event('org.assignment.created',
    '{"org_id": "org-initech", "user_id": "usr-initech-ghost", "role": "ghost"}',
    NULL, 'initech', NULL, 'ghost-onboarding');
ROLLBACK;
