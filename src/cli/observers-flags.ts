/** The environment variable a dashboard's token may come from (a flag would show in `ps`). */
export const TOKEN_ENV = 'BULKBILL_DASHBOARD_TOKEN';
